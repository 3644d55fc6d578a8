"""Training-set retrieval: loopml's point-in-time join against the raw DuckDB ASOF floor and against Feast.

Builds feature views of random data as Parquet, then times, on the same files, each system in its own process
(which gives each its own peak memory):
- floor: one raw DuckDB ASOF query per view (latest row at or before the entity time; no ttl, no created time),
- loopml: `Project.get_historical_features` (ttl, created-time cutoff, ties, left join, row order kept),
- Feast's file (pandas/dask) and DuckDB (ibis) offline stores, same ttl and created-time cutoff, run from
  their own venv `.bench/feast` (`make .bench/feast/.installed`; skipped when absent or with --no-feast).
loopml must agree with the floor wherever the floor's row is within the ttl, and Feast with loopml on every
row. A Feast run that fails (--feast-timeout, --memory-limit or an error) is tried again at a tenth of the size
(entity rows, feature rows and users alike), where loopml and the floor are timed too, so each ratio compares
one size.
Prints one table and writes benchmarks/results/features.json.

    .venv/bin/python benchmarks/features.py                 # 1M entity rows, 3 views x 5M rows x 10 features
    .venv/bin/python benchmarks/features.py --entities 100000 --rows 500000 --no-feast
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
FEAST_PYTHON = HERE.parent / ".bench" / "feast" / "bin" / "python"
START = pd.Timestamp("2026-01-01", tz="UTC")
DAYS = 90
DIVISORS = (1, 10, 100)
SYSTEMS = {
    "floor": ("raw DuckDB ASOF (floor)", [sys.executable, HERE / "loopml_offline.py", "--system", "floor"]),
    "loopml": (
        "loopml get_historical_features",
        [sys.executable, HERE / "loopml_offline.py", "--system", "loopml"],
    ),
    "feast-file": (
        "Feast file offline store (dask)",
        [FEAST_PYTHON, HERE / "feast_offline.py", "--store", "file"],
    ),
    "feast-duckdb": (
        "Feast DuckDB offline store (ibis)",
        [FEAST_PYTHON, HERE / "feast_offline.py", "--store", "duckdb"],
    ),
}


@dataclass(frozen=True)
class Size:
    entities: int
    rows: int
    users: int


@dataclass
class Run:
    """One system's worker process at one size; `result` is None when it did not finish."""

    system: str
    size: Size
    seconds: list[float]
    peak_bytes: int
    failure: str | None
    result: pd.DataFrame | None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def build(directory: Path, args: argparse.Namespace, size: Size) -> None:
    """Write one Parquet file per view, entities.parquet (with a row_id) and spec.json into `directory`."""
    rng = np.random.default_rng(0)
    views = []
    for v in range(args.views):
        seconds = np.sort(rng.integers(0, DAYS * 86_400, size.rows))
        event = START + pd.to_timedelta(seconds, unit="s")
        columns = {
            "user_id": rng.integers(0, size.users, size.rows),
            "event_timestamp": event,
            "created_timestamp": event + pd.to_timedelta(rng.integers(0, 600, size.rows), unit="s"),
        }
        features = [f"f{v}_{i}" for i in range(args.features)]
        columns.update({f: rng.random(size.rows) for f in features})
        path = directory / f"view{v}.parquet"
        pq.write_table(pa.table(columns), path, row_group_size=500_000)
        views.append({"name": f"view{v}", "path": str(path), "features": features})
    entities = pd.DataFrame(
        {
            "row_id": np.arange(size.entities),
            "user_id": rng.integers(0, size.users, size.entities),
            "event_timestamp": START
            + pd.to_timedelta(rng.integers(0, DAYS * 86_400, size.entities), unit="s"),
        }
    )
    entities.to_parquet(directory / "entities.parquet")
    (directory / "spec.json").write_text(json.dumps({"ttl_days": args.ttl_days, "views": views}))


def resident_bytes(pid: int) -> int:
    """Current resident memory of a process, 0 once it is gone (or without /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def watch(command: list, log: Path, timeout: float | None, limit: float) -> tuple[str | None, int]:
    """Run `command`, killing it past `timeout` seconds or `limit` bytes resident; (failure, sampled peak)."""
    with log.open("w") as output:
        process = subprocess.Popen([str(c) for c in command], stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + (timeout or math.inf)
        peak, failure = 0, None
        while process.poll() is None:
            peak = max(peak, resident_bytes(process.pid))
            if peak > limit:
                failure = f"killed above the {limit / 1e9:g} GB memory limit"
            elif time.monotonic() > deadline:
                failure = f"stopped at the {timeout:g} s time limit"
            if failure:
                process.kill()
                process.wait()
            time.sleep(0.1)
    if failure is None and process.returncode:
        lines = log.read_text().strip().splitlines() or [""]
        failure = f"exit {process.returncode}: {lines[-1][:200]}"
    return failure, peak


def run(system: str, data: Path, size: Size, args: argparse.Namespace) -> Run:
    """One worker process; a run stopped for time still counts the calls it finished."""
    out = data / system
    out.mkdir()
    command = [*SYSTEMS[system][1], data, out, "--repeats", args.repeats]
    timeout = args.feast_timeout if system.startswith("feast") else None
    failure, peak = watch(command, out / "log.txt", timeout, args.memory_limit * 1e9)
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else {}
    seconds = timing.get("seconds", [])
    peak = max(peak, timing.get("peak_bytes", 0))
    if seconds and (failure is None or "time limit" in failure):
        return Run(system, size, seconds, peak, None, pd.read_parquet(out / "result.parquet"))
    return Run(system, size, [], peak, failure or "no timing written", None)


def check_floor(floor: Run, loopml: Run, args: argparse.Namespace) -> None:
    """The floor ignores ttl and created time; compare where both say the same row is the answer."""
    raw = floor.result.sort_values("row_id", ignore_index=True)
    ours = loopml.result.sort_values("row_id", ignore_index=True)
    for v in range(args.views):
        age = raw["event_timestamp"] - raw[f"view{v}_ts"]
        fresh = age.notna() & (age <= pd.Timedelta(days=args.ttl_days) - pd.Timedelta(minutes=10))
        agree = np.isclose(raw.loc[fresh, f"f{v}_0"], ours.loc[fresh, f"f{v}_0"]).mean()
        assert agree > 0.99, f"view{v}: only {agree:.1%} of loopml's rows agree with the floor"


def check_feast(loopml: Run, feast: Run, args: argparse.Namespace) -> dict[str, float]:
    """Every feature of every row Feast returns, joined back on row_id (Feast reorders rows). Both ask for
    the same semantics, so they must agree nearly everywhere (a tie of event and created time may go either
    way). Rows Feast leaves out are counted, with how many of them loopml has a null for."""
    ours = loopml.result.set_index("row_id")
    theirs = feast.result.set_index("row_id")
    columns = [f"f{v}_{i}" for v in range(args.views) for i in range(args.features)]
    returned = ours.loc[theirs.index, columns].to_numpy(float)
    agree = np.isclose(returned, theirs[columns].to_numpy(float), equal_nan=True).all(axis=1).mean()
    left_out = ours.loc[~ours.index.isin(theirs.index), columns]
    name = SYSTEMS[feast.system][0]
    print(
        f"  {name} at {feast.size.entities:,}: agrees with loopml on {agree:.3%} of the {len(theirs):,} rows "
        f"it returns; leaves out {len(left_out):,} of {len(ours):,} entity rows "
        f"({int(left_out.isna().any(axis=1).sum()):,} of them with a null feature in loopml's answer)"
    )
    assert agree > 0.999, f"{name}: only {agree:.3%} of rows agree with loopml"
    return {"agreement": float(agree), "rows_returned": len(theirs), "rows_left_out": len(left_out)}


def feast_systems(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The Feast systems to run and Feast's version, or none with the reason printed."""
    if args.no_feast:
        return [], None
    if not FEAST_PYTHON.exists():
        print(f"skipping Feast: {FEAST_PYTHON} is missing (make .bench/feast/.installed)")
        return [], None
    version = subprocess.run(
        [str(FEAST_PYTHON), "-c", "import feast; print(feast.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    return ["feast-file", "feast-duckdb"], version


def measure(args: argparse.Namespace, feast: list[str]) -> tuple[list[Run], dict[str, dict]]:
    """Floor and loopml at full size, Feast at the largest size it finishes (and the floor and loopml there)."""
    runs, agreement, pending = [], {}, feast
    for divisor in DIVISORS:
        size = Size(*(max(1, n // divisor) for n in (args.entities, args.rows, args.users)))
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            build(data, args, size)
            at_size = [run(system, data, size, args) for system in ("floor", "loopml", *pending)]
            for failed in (r for r in at_size[:2] if r.failure):
                log = (data / failed.system / "log.txt").read_text()[-3000:]
                sys.exit(f"{SYSTEMS[failed.system][0]} failed: {failed.failure}\n{log}")
            check_floor(*at_size[:2], args)
            for feast_run in at_size[2:]:
                if feast_run.result is not None:
                    agreement[f"{feast_run.system}@{size.entities}"] = check_feast(
                        at_size[1], feast_run, args
                    )
        runs.extend(at_size)
        pending = [r.system for r in at_size[2:] if r.failure]
        if not pending:
            break
    return runs, agreement


def rows_of(runs: list[Run]) -> list[dict]:
    """One record per run: sizes, median, peak, the ratio to the floor and loopml's time over its own."""
    medians = {(r.system, r.size): r.median for r in runs if r.failure is None}
    records = []
    for r in runs:
        record = {"system": SYSTEMS[r.system][0], **vars(r.size), "peak_bytes": r.peak_bytes}
        if r.failure:
            records.append({**record, "failure": r.failure})
            continue
        records.append(
            {
                **record,
                "median_seconds": r.median,
                "repeats": len(r.seconds),
                "ratio_to_floor": r.median / medians[("floor", r.size)],
                "ratio_loopml_to_system": medians[("loopml", r.size)] / r.median,
            }
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=5_000_000, help="feature rows per view")
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--features", type=int, default=10, help="features per view")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--ttl-days", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-feast", action="store_true", help="time only the floor and loopml")
    parser.add_argument(
        "--feast-timeout",
        type=float,
        default=600,
        help="seconds for one Feast process (calls it finished count)",
    )
    parser.add_argument(
        "--memory-limit", type=float, default=12, help="GB resident before a process is killed"
    )
    parser.add_argument("--output", type=Path, default=HERE / "results" / "features.json")
    args = parser.parse_args()

    feast, version = feast_systems(args)
    print(
        f"{args.entities:,} entity rows x {args.views} views x {args.rows:,} rows x {args.features} features, "
        f"{args.users:,} users, ttl {args.ttl_days} d, median of {args.repeats}"
        + (f", Feast {version}" if version else "")
    )
    runs, agreement = measure(args, feast)
    records = rows_of(runs)
    print(
        f"  {'system':<34} {'entities':>10} {'rows/view':>10} {'median':>9} {'peak':>8} {'x floor':>8} {'loopml/x':>8}"
    )
    for row in records:
        head = f"  {row['system']:<34} {row['entities']:>10,} {row['rows']:>10,}"
        if "failure" in row:
            print(f"{head}   {row['failure']} (peak {row['peak_bytes'] / 1e9:.1f} GB)")
            continue
        print(
            f"{head} {row['median_seconds']:7.2f} s {row['peak_bytes'] / 1e9:5.1f} GB "
            f"{row['ratio_to_floor']:8.2f} {row['ratio_loopml_to_system']:8.2f}"
        )
    args.output.write_text(
        json.dumps(
            {
                "args": {**vars(args), "output": str(args.output)},
                "feast_version": version,
                "results": [r for r in records if "failure" not in r],
                "failures": [r for r in records if "failure" in r],
                "feast_agreement": agreement,
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
