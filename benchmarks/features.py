"""Training-set retrieval: loopml's point-in-time join against raw DuckDB queries (the floor) and Feast.

Builds feature views of random data as Parquet, plus a transactions file (as many rows as a view: user,
event and created time, amount) aggregated as "spend over the last 7 days", then times, on the same files,
each system in its own process (which gives each its own peak memory):
- floor: one raw DuckDB ASOF query per view (latest row at or before the entity time; no ttl, no created
  time) and one range join summing the amounts of [t - 7 d, t) created before t,
- loopml: `Project.get_historical_features` (ttl, created-time cutoff, ties, left join, row order kept), the
  aggregation declared as `Aggregation("amount", "sum", "7d")`,
- Feast's file (pandas/dask) and DuckDB (ibis) offline stores, same ttl and created-time cutoff, run from
  their own venv `.bench/feast` (`make .bench/feast/.installed`; skipped when absent or with --no-feast). The
  aggregation is declared as Feast documents it (StreamFeatureView, `Aggregation(time_window=7 days)`); Feast
  0.67 cannot retrieve it offline, so its runs cover the plain views only, and the floor and loopml are then
  timed on the plain views as well, so each ratio compares the same work.
loopml must agree with the floor wherever the floor's row is within the ttl and on every aggregate, and Feast
with loopml on every row. A Feast run that fails (--feast-timeout, --memory-limit or an error) is tried again
at a tenth of the size (entity rows, feature and event rows and users alike), where loopml and the floor are
timed too, so each ratio compares one size.
Prints one table and writes benchmarks/results/features.json.

    .venv/bin/python benchmarks/features.py                 # 1M entity rows, 3 views x 5M rows x 10 features
    .venv/bin/python benchmarks/features.py --entities 100000 --rows 500000 --users 10000 --no-feast
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
AGGREGATION = {"name": "transactions", "column": "amount", "feature": "spend_7d", "window_days": 7}
SYSTEMS = {
    "floor": (
        "raw DuckDB queries (floor)",
        [sys.executable, HERE / "loopml_offline.py", "--system", "floor"],
    ),
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
    """One system's worker process at one size, with or without the aggregation; `result` is None when it did
    not finish. `note` says why a run asked for the aggregation left it out."""

    system: str
    size: Size
    aggregation: bool
    seconds: list[float]
    peak_bytes: int
    failure: str | None
    result: pd.DataFrame | None
    note: str | None = None

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
    spec = {"ttl_days": args.ttl_days, "views": views}
    if not args.no_aggregation:
        spec["aggregation"] = transactions(directory, rng, size, args.events_created)
    entities = pd.DataFrame(
        {
            "row_id": np.arange(size.entities),
            "user_id": rng.integers(0, size.users, size.entities),
            "event_timestamp": START
            + pd.to_timedelta(rng.integers(0, DAYS * 86_400, size.entities), unit="s"),
        }
    )
    entities.to_parquet(directory / "entities.parquet")
    (directory / "spec.json").write_text(json.dumps(spec))


def transactions(directory: Path, rng: np.random.Generator, size: Size, created: bool) -> dict:
    """A card-transactions-like event file, as many rows as a view: user, event time, created time (landed
    up to 10 min later; left out with --no-events-created) and a log-normal amount (median about 20)."""
    seconds = np.sort(rng.integers(0, DAYS * 86_400, size.rows))
    event = START + pd.to_timedelta(seconds, unit="s")
    columns = {"user_id": rng.integers(0, size.users, size.rows), "event_timestamp": event}
    if created:
        columns["created_timestamp"] = event + pd.to_timedelta(rng.integers(0, 600, size.rows), unit="s")
    columns["amount"] = np.round(rng.lognormal(3.0, 1.0, size.rows), 2)
    path = directory / "transactions.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=500_000)
    return {**AGGREGATION, "path": str(path), "created": created}


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


def run(system: str, data: Path, size: Size, args: argparse.Namespace, aggregation: bool) -> Run:
    """One worker process; a run stopped for time still counts the calls it finished. A worker may leave the
    aggregation out (Feast, when it cannot compute it) and says so in timing.json."""
    out = data / (system if aggregation else f"{system}-views")
    out.mkdir()
    command = [*SYSTEMS[system][1], data, out, "--repeats", args.repeats]
    if not aggregation:
        command.append("--no-aggregation")
    timeout = args.feast_timeout if system.startswith("feast") else None
    failure, peak = watch(command, out / "log.txt", timeout, args.memory_limit * 1e9)
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else {}
    seconds = timing.get("seconds", [])
    peak = max(peak, timing.get("peak_bytes", 0))
    aggregated = timing.get("aggregation", aggregation)
    note = timing.get("aggregation_error")
    if seconds and (failure is None or "time limit" in failure):
        result = pd.read_parquet(out / "result.parquet")
        return Run(system, size, aggregated, seconds, peak, None, result, note)
    return Run(system, size, aggregated, [], peak, failure or "no timing written", None, note)


def check_floor(floor: Run, loopml: Run, args: argparse.Namespace) -> dict[str, float]:
    """The floor ignores ttl and created time; compare where both say the same row is the answer. The
    aggregation means the same in both, so every aggregate must be equal."""
    raw = floor.result.sort_values("row_id", ignore_index=True)
    ours = loopml.result.sort_values("row_id", ignore_index=True)
    agreement, shares = [], {}
    for v in range(args.views):
        age = raw["event_timestamp"] - raw[f"view{v}_ts"]
        fresh = age.notna() & (age <= pd.Timedelta(days=args.ttl_days) - pd.Timedelta(minutes=10))
        agree = np.isclose(raw.loc[fresh, f"f{v}_0"], ours.loc[fresh, f"f{v}_0"]).mean()
        assert agree > 0.99, f"view{v}: only {agree:.1%} of loopml's rows agree with the floor"
        agreement.append(f"view{v} {agree:.3%} of {int(fresh.sum()):,} rows within the ttl")
        shares[f"view{v}"] = float(agree)
    feature = AGGREGATION["feature"]
    if loopml.aggregation:
        equal = np.isclose(raw[feature], ours[feature], rtol=1e-9, atol=1e-9)
        nonzero = int((raw[feature] != 0).sum())
        agreement.append(f"{feature} {equal.mean():.3%} of {len(raw):,} rows ({nonzero:,} non-zero)")
        shares[feature] = float(equal.mean())
        assert equal.all(), f"{feature}: {int((~equal).sum()):,} rows differ between loopml and the floor"
    work = "with" if loopml.aggregation else "without"
    print(f"  loopml = floor at {loopml.size.entities:,} ({work} the aggregation): {'; '.join(agreement)}")
    return shares


def check_feast(loopml: Run, feast: Run, args: argparse.Namespace) -> dict[str, float]:
    """Every feature of every row Feast returns, joined back on row_id (Feast reorders rows). Both ask for
    the same semantics, so they must agree nearly everywhere (a tie of event and created time may go either
    way). Rows Feast leaves out are counted, with how many of them loopml has a null for."""
    ours = loopml.result.set_index("row_id")
    theirs = feast.result.set_index("row_id")
    columns = [f"f{v}_{i}" for v in range(args.views) for i in range(args.features)]
    if feast.aggregation:
        columns.append(AGGREGATION["feature"])
    returned = ours.loc[theirs.index, columns].to_numpy(float)
    agree = np.isclose(returned, theirs[columns].to_numpy(float), equal_nan=True).all(axis=1).mean()
    left_out = ours.loc[~ours.index.isin(theirs.index), columns]
    name = SYSTEMS[feast.system][0]
    print(
        f"  {name} at {feast.size.entities:,}: agrees with loopml on {agree:.3%} of the {len(theirs):,} rows "
        f"it returns ({len(columns)} features each); leaves out {len(left_out):,} of {len(ours):,} entity "
        f"rows ({int(left_out.isna().any(axis=1).sum()):,} of them with a null feature in loopml's answer)"
    )
    assert agree > 0.999, f"{name}: only {agree:.3%} of rows agree with loopml"
    return {
        "agreement": float(agree),
        "rows_returned": len(theirs),
        "rows_left_out": len(left_out),
        "aggregation_compared": feast.aggregation,
    }


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


def ours(
    data: Path, size: Size, args: argparse.Namespace, aggregation: bool, agreement: dict[str, dict]
) -> list[Run]:
    """The floor and loopml at one size, checked against each other (what share agrees goes to
    `agreement`); a failure of either ends the script."""
    pair = [run(system, data, size, args, aggregation) for system in ("floor", "loopml")]
    for failed in (r for r in pair if r.failure):
        out = failed.system if aggregation else f"{failed.system}-views"
        log = (data / out / "log.txt").read_text()[-3000:]
        sys.exit(f"{SYSTEMS[failed.system][0]} failed: {failed.failure}\n{log}")
    agreement[f"{size.entities}{'' if aggregation else '-views'}"] = check_floor(*pair, args)
    return pair


def measure(args: argparse.Namespace, feast: list[str]) -> tuple[list[Run], dict[str, dict]]:
    """Floor and loopml at full size, Feast at the largest size it finishes (and the floor and loopml there,
    on the plain views too when a Feast run could not compute the aggregation). Returns the runs and the
    shares of values that agree: loopml with the floor, each Feast run with loopml."""
    runs, pending = [], feast
    agreement: dict[str, dict] = {"loopml_floor": {}, "feast_loopml": {}}
    with_aggregation = not args.no_aggregation
    for divisor in DIVISORS:
        size = Size(*(max(1, n // divisor) for n in (args.entities, args.rows, args.users)))
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            build(data, args, size)
            at_size = ours(data, size, args, with_aggregation, agreement["loopml_floor"])
            feast_runs = [run(system, data, size, args, with_aggregation) for system in pending]
            if any(r.failure is None and r.aggregation != with_aggregation for r in feast_runs):
                at_size += ours(data, size, args, False, agreement["loopml_floor"])
            for feast_run in (r for r in feast_runs if r.result is not None):
                key = f"{feast_run.system}@{size.entities}"
                agreement["feast_loopml"][key] = check_feast(at_size[1], feast_run, args)
        runs.extend(at_size + feast_runs)
        pending = [r.system for r in feast_runs if r.failure]
        if not pending:
            break
    return runs, agreement


def work(run: Run, args: argparse.Namespace) -> str:
    """What a run retrieved: the plain views, and the aggregation if it computed it."""
    views = f"{args.views} views"
    return f"{views} + 7d sum" if run.aggregation else views


def rows_of(runs: list[Run], args: argparse.Namespace) -> list[dict]:
    """One record per run: sizes, work, median, peak, the ratio to the floor and loopml's time over its own,
    both on the same work at the same size."""
    medians = {(r.system, r.size, r.aggregation): r.median for r in runs if r.failure is None}
    records = []
    for r in runs:
        record = {
            "system": SYSTEMS[r.system][0],
            **vars(r.size),
            "work": work(r, args),
            "aggregation": r.aggregation,
            "peak_bytes": r.peak_bytes,
        }
        if r.note:
            record["aggregation_error"] = r.note
        if r.failure:
            records.append({**record, "failure": r.failure})
            continue
        records.append(
            {
                **record,
                "median_seconds": r.median,
                "repeats": len(r.seconds),
                "ratio_to_floor": r.median / medians[("floor", r.size, r.aggregation)],
                "ratio_loopml_to_system": medians[("loopml", r.size, r.aggregation)] / r.median,
            }
        )
    return records


def print_table(records: list[dict]) -> None:
    print(
        f"  {'system':<34} {'work':<16} {'entities':>10} {'rows/view':>10} {'median':>9} {'peak':>8} "
        f"{'x floor':>8} {'loopml/x':>8}"
    )
    for row in records:
        head = f"  {row['system']:<34} {row['work']:<16} {row['entities']:>10,} {row['rows']:>10,}"
        if "failure" in row:
            print(f"{head}   {row['failure']} (peak {row['peak_bytes'] / 1e9:.1f} GB)")
            continue
        print(
            f"{head} {row['median_seconds']:7.2f} s {row['peak_bytes'] / 1e9:5.1f} GB "
            f"{row['ratio_to_floor']:8.2f} {row['ratio_loopml_to_system']:8.2f}"
        )
    unsupported = {row["system"]: row["aggregation_error"] for row in records if "aggregation_error" in row}
    for system, error in unsupported.items():
        print(
            f"  {system} cannot compute the 7-day aggregation: get_historical_features for the "
            f"StreamFeatureView declaring it fails with {error.rstrip('.')}. Its time covers the plain "
            "views only, compared with the floor and loopml on those."
        )


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
        "--no-aggregation",
        action="store_true",
        help="leave out the 7-day aggregation (the benchmark before it was added)",
    )
    parser.add_argument(
        "--events-created",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give the transactions a created time, counted only when before the entity time",
    )
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
    aggregation = (
        ""
        if args.no_aggregation
        else f" + sum of amount over 7 d from {args.rows:,} transactions"
        + ("" if args.events_created else " (no created time)")
    )
    print(
        f"{args.entities:,} entity rows x {args.views} views x {args.rows:,} rows x {args.features} features"
        f"{aggregation}, {args.users:,} users, ttl {args.ttl_days} d, median of {args.repeats}"
        + (f", Feast {version}" if version else "")
    )
    runs, agreement = measure(args, feast)
    records = rows_of(runs, args)
    print_table(records)
    args.output.write_text(
        json.dumps(
            {
                "args": {**vars(args), "output": str(args.output)},
                "feast_version": version,
                "results": [r for r in records if "failure" not in r],
                "failures": [r for r in records if "failure" in r],
                "loopml_floor_agreement": agreement["loopml_floor"],
                "feast_agreement": agreement["feast_loopml"],
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
