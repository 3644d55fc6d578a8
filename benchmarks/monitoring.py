"""Drift monitoring: loopml against Evidently's DataDriftPreset and NannyML's UnivariateDriftCalculator.

Data: a reference and a current table of 20 features, 10 numeric (normal, log-normal, uniform, skewed counts,
2% missing) and 10 categorical (3 to 50 categories, Zipf-like frequencies), with drift put into 6 of them (3
numeric shifted or widened, 3 categorical re-weighted, one with a new category). Written once to Parquet under
.bench/monitoring-data/ and read by every tool.

1. 1M reference rows against 1M current rows. Each tool runs in a process of its own (the peers in their
   venvs, `make .bench/evidently/.installed .bench/nannyml/.installed`), through the runners in
   benchmarks/peers/, in two modes: `default` (the tool picks its methods) and `tests` (two-sample
   Kolmogorov-Smirnov for numbers, chi-squared for categories); loopml also `profiled` (the monitor's path:
   reference profile, current file streamed through its bins). Reported: drift seconds (the computation; the
   Parquet read is timed apart), the process's peak memory (VmHWM, reads included) and the ratios against
   loopml. loopml runs REPEATS times (median); a peer once per mode (minutes each).
   Agreement (tests mode): loopml's KS statistic and p-value and chi-squared p-value against scipy on the same
   columns (to 1e-9); Evidently's KS p-values against scipy; NannyML's chi-squared against scipy.
2. 10M current rows: loopml profiled (target: peak memory under 2 GB); each peer in default mode with a
   memory limit (RLIMIT_AS, 16 GiB) and a time limit: what it does is reported (time and memory, or how it
   failed).

Prints the tables and writes benchmarks/results/monitoring.json.

    .venv/bin/python benchmarks/monitoring.py                 # 1M and 10M rows
    .venv/bin/python benchmarks/monitoring.py --quick         # 50k rows, no 10M part: a smoke test
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table
from scipy import stats

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNNERS = HERE / "peers"
PYTHONS = {
    "loopml": Path(sys.executable),
    "evidently": ROOT / ".bench" / "evidently" / "bin" / "python",
    "nannyml": ROOT / ".bench" / "nannyml" / "bin" / "python",
}
NUMERIC = [f"num{i}" for i in range(10)]
CATEGORICAL = [f"cat{i}" for i in range(10)]
DRIFTED = {"num1", "num4", "num7", "cat2", "cat5", "cat8"}
CHUNK_ROWS = 1_000_000
PEER_MEMORY_LIMIT = 16 * 2**30
MEMORY_TARGET = 2 * 2**30
SPEED_TARGET = 20.0  # loopml at least this many times faster than Evidently

console = Console(width=120)


def table_part(rng: np.random.Generator, rows: int, drifted: bool) -> pd.DataFrame:
    """`rows` rows of the benchmark's features; `drifted` applies the current period's changes."""
    shift = 1.0 if drifted else 0.0
    data: dict[str, Any] = {}
    for i, name in enumerate(NUMERIC):
        moved = drifted and name in DRIFTED
        kind = i % 4
        if kind == 0:
            values = rng.normal(50.0 + (5.0 * shift if moved else 0), 10.0, rows)
        elif kind == 1:
            values = rng.lognormal(3.0, 0.8 * (1.3 if moved else 1.0), rows)
        elif kind == 2:
            values = rng.uniform(0.0, 100.0 + (20.0 if moved else 0.0), rows)
        else:
            values = rng.poisson(3.0 + (1.0 if moved else 0.0), rows).astype(float)
        values[rng.random(rows) < 0.02] = np.nan
        data[name] = values
    for i, name in enumerate(CATEGORICAL):
        size = (3, 5, 8, 12, 20, 30, 50, 4, 6, 10)[i]
        weights = 1.0 / np.arange(1, size + 1)
        labels = [f"{name}_{k}" for k in range(size)]
        if drifted and name in DRIFTED:
            weights = weights[::-1].copy()  # the rare categories become common
            if name == "cat8":
                labels.append(f"{name}_new")
                weights = np.append(weights, weights.sum() * 0.2)
        data[name] = np.asarray(labels, dtype=object)[
            rng.choice(len(labels), rows, p=weights / weights.sum())
        ]
    return pd.DataFrame(data)


def write_table(path: Path, rows: int, drifted: bool, seed: int) -> None:
    """Write `rows` rows in chunks, so a 10M-row file never sits in this process's memory."""
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    writer = None
    written = 0
    while written < rows:
        part = pa.Table.from_pandas(
            table_part(rng, min(CHUNK_ROWS, rows - written), drifted), preserve_index=False
        )
        writer = writer or pq.ParquetWriter(temporary, part.schema)
        writer.write_table(part, row_group_size=262_144)
        written += part.num_rows
    assert writer is not None
    writer.close()
    temporary.replace(path)


def run_tool(
    tool: str, reference: Path, current: Path, mode: str, out: Path, *, profiled: bool = False, timeout: float
) -> dict[str, Any]:
    """One tool, one mode, in its own process; a crash, a timeout or a missing output is a result too."""
    python = PYTHONS[tool]
    if not python.exists():
        return {
            "peer": tool,
            "mode": mode,
            "error": {"type": "NotInstalled", "message": f"{python} is missing"},
        }
    command = [
        str(python),
        str(RUNNERS / f"{tool}_drift.py"),
        "--reference",
        str(reference),
        "--current",
        str(current),
        "--numeric",
        ",".join(NUMERIC),
        "--categorical",
        ",".join(CATEGORICAL),
        "--mode",
        mode,
        "--output",
        str(out),
        *(["--profiled"] if profiled else []),
    ]
    out.unlink(missing_ok=True)
    limit = None if tool == "loopml" else _memory_limit
    started = time.perf_counter()
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {
            "peer": tool,
            "mode": mode,
            "error": {"type": "Timeout", "message": f"not done in {timeout:.0f} s"},
        }
    wall = time.perf_counter() - started
    if not out.exists():
        message = f"exit {finished.returncode}: {finished.stderr.strip()[-400:]}"
        return {
            "peer": tool,
            "mode": mode,
            "error": {"type": "Crashed", "message": message},
            "wall_seconds": wall,
        }
    result = json.loads(out.read_text())
    result["wall_seconds"] = wall
    return result


def _memory_limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (PEER_MEMORY_LIMIT, PEER_MEMORY_LIMIT))


def scipy_reference(reference: Path, current: Path) -> dict[str, dict[str, float]]:
    """scipy's KS and chi-squared on the raw columns: what every tool's tests mode must reproduce."""
    expected: dict[str, dict[str, float]] = {}
    for name in NUMERIC:
        ref = pd.read_parquet(reference, columns=[name])[name].dropna().to_numpy()
        cur = pd.read_parquet(current, columns=[name])[name].dropna().to_numpy()
        result = stats.ks_2samp(ref, cur)
        expected[name] = {"statistic": float(result.statistic), "p_value": float(result.pvalue)}
    for name in CATEGORICAL:
        ref_counts = pd.read_parquet(reference, columns=[name])[name].value_counts()
        cur_counts = pd.read_parquet(current, columns=[name])[name].value_counts()
        categories = sorted(set(ref_counts.index) | set(cur_counts.index))
        table = np.array(
            [[ref_counts.get(c, 0) for c in categories], [cur_counts.get(c, 0) for c in categories]]
        )
        result = stats.chi2_contingency(table, correction=False)
        expected[name] = {"statistic": float(result.statistic), "p_value": float(result.pvalue)}
    return expected


def agreement(
    result: dict[str, Any], expected: dict[str, dict[str, float]], columns: list[str]
) -> dict[str, Any]:
    """Largest differences from scipy over `columns`, for what the tool reports (None: it reports nothing)."""
    features = result.get("features") or {}
    gaps: dict[str, list[float]] = {"statistic": [], "p_value": []}
    for name in columns:
        got = features.get(name, {})
        for key in gaps:
            if got.get(key) is not None:
                gaps[key].append(abs(got[key] - expected[name][key]))
    return {f"max_{key}_gap": max(values) if values else None for key, values in gaps.items()}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median timing and memory over repeats (the first run's features)."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {**runs[0], "repeats": len(runs)}
    return {
        **good[0],
        "drift_seconds": statistics.median(r["drift_seconds"] for r in good),
        "read_seconds": statistics.median(r["read_seconds"] for r in good)
        if good[0].get("read_seconds")
        else None,
        "peak_vmhwm_bytes": statistics.median(r["peak_vmhwm_bytes"] for r in good),
        "repeats": len(good),
    }


def detection(result: dict[str, Any]) -> str:
    """How many of the drifted and of the stable features the tool flagged."""
    features = result.get("features") or {}
    if not features:
        return "-"
    caught = sum(bool(features[n].get("drifted")) for n in DRIFTED if n in features)
    false = sum(bool(f.get("drifted")) for n, f in features.items() if n not in DRIFTED)
    return f"{caught}/{len(DRIFTED)}, {false}/{len(features) - len(DRIFTED)}"


def part_one(args: argparse.Namespace, reference: Path, current: Path, work: Path) -> dict[str, Any]:
    console.print(
        f"[bold]1.[/] {args.rows:,} reference rows against {args.rows:,} current rows x 20 features"
    )
    results: dict[str, Any] = {}
    for mode in ("default", "tests"):
        runs = [
            run_tool("loopml", reference, current, mode, work / f"loopml-{mode}.json", timeout=args.timeout)
            for _ in range(args.repeats)
        ]
        results[f"loopml/{mode}"] = summarise(runs)
        show(f"loopml/{mode}", results[f"loopml/{mode}"])
    runs = [
        run_tool(
            "loopml",
            reference,
            current,
            "default",
            work / "loopml-profiled.json",
            profiled=True,
            timeout=args.timeout,
        )
        for _ in range(args.repeats)
    ]
    results["loopml/profiled"] = summarise(runs)
    show("loopml/profiled", results["loopml/profiled"])
    for peer in args.peers:
        for mode in ("default", "tests"):
            key = f"{peer}/{mode}"
            results[key] = run_tool(
                peer, reference, current, mode, work / f"{peer}-{mode}.json", timeout=args.timeout
            )
            show(key, results[key])
    console.print("  scipy on the raw columns (the reference for the tests mode) ...")
    expected = scipy_reference(reference, current)
    checks = {
        "loopml_ks": agreement(results["loopml/tests"], expected, NUMERIC),
        "loopml_chi_squared": agreement(results["loopml/tests"], expected, CATEGORICAL),
        "evidently_ks": agreement(results.get("evidently/tests", {}), expected, NUMERIC),
        "nannyml_chi_squared": agreement(results.get("nannyml/tests", {}), expected, CATEGORICAL),
        "nannyml_ks": agreement(results.get("nannyml/tests", {}), expected, NUMERIC),
    }
    loopml_gaps = [
        v for key in ("loopml_ks", "loopml_chi_squared") for v in checks[key].values() if v is not None
    ]
    checks["loopml_equals_scipy"] = bool(loopml_gaps) and max(loopml_gaps) <= 1e-9
    return {"rows": args.rows, "results": results, "checks": checks}


def part_two(args: argparse.Namespace, reference: Path, big: Path, work: Path) -> dict[str, Any]:
    console.print(f"[bold]2.[/] {args.big_rows:,} current rows (reference {args.rows:,})")
    results = {
        "loopml/profiled": run_tool(
            "loopml",
            reference,
            big,
            "default",
            work / "loopml-big.json",
            profiled=True,
            timeout=args.big_timeout,
        )
    }
    show("loopml/profiled", results["loopml/profiled"])
    for peer in args.peers:
        results[f"{peer}/default"] = run_tool(
            peer, reference, big, "default", work / f"{peer}-big.json", timeout=args.big_timeout
        )
        show(f"{peer}/default", results[f"{peer}/default"])
    memory = results["loopml/profiled"].get("peak_vmhwm_bytes")
    return {
        "rows": args.big_rows,
        "results": results,
        "checks": {"loopml_under_2_gb": memory is not None and memory < MEMORY_TARGET},
    }


def show(name: str, result: dict[str, Any]) -> None:
    if "error" in result:
        console.print(f"  {name:18} [red]{result['error']['type']}[/]: {result['error']['message'][:160]}")
        return
    console.print(
        f"  {name:18} drift {result['drift_seconds']:8.2f} s, peak {_gb(result.get('peak_vmhwm_bytes'))}, "
        f"{detection(result)}"
    )


def results_table(title: str, part: dict[str, Any]) -> Table:
    table = Table(title=title)
    columns = (
        "tool / mode",
        "drift s",
        "read s",
        "peak memory",
        "time / loopml",
        "memory / loopml",
        "flagged",
    )
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("tool / mode", "flagged") else "right", no_wrap=True
        )
    results = part["results"]
    for key, result in results.items():
        base = results.get(f"loopml/{key.split('/')[1]}") or results.get("loopml/profiled")
        if "error" in result:
            memory = _gb(result.get("peak_vmhwm_bytes"))  # how far it got before failing
            table.add_row(key, "-", "-", memory, "-", "-", result["error"]["type"])  # message: JSON, log
            continue
        table.add_row(
            key,
            f"{result['drift_seconds']:.2f}",
            "-" if result.get("read_seconds") is None else f"{result['read_seconds']:.2f}",
            _gb(result.get("peak_vmhwm_bytes")),
            _ratio(result.get("drift_seconds"), base.get("drift_seconds") if base else None),
            _ratio(result.get("peak_vmhwm_bytes"), base.get("peak_vmhwm_bytes") if base else None),
            detection(result),
        )
    return table


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if not value or not base else f"{value / base:.1f}"


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="loopml runs per mode (median)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per tool run in part 1")
    parser.add_argument("--big-timeout", type=float, default=900.0, help="seconds per tool run in part 2")
    parser.add_argument("--no-big", action="store_true", help="skip part 2")
    parser.add_argument("--quick", action="store_true", help="at most 50k rows, one repeat, no part 2")
    parser.add_argument(
        "--peers", default="evidently,nannyml", help="peers to run, comma-separated ('' for none)"
    )
    parser.add_argument("--data", type=Path, default=ROOT / ".bench" / "monitoring-data")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "monitoring.json")
    args = parser.parse_args()
    args.peers = [p for p in args.peers.split(",") if p]
    unknown = set(args.peers) - {"evidently", "nannyml"}
    if unknown:
        parser.error(f"unknown peer(s) {sorted(unknown)}; use evidently, nannyml")
    if args.quick:
        args.rows, args.repeats, args.no_big = min(args.rows, 50_000), 1, True
    work = args.data / "runs"
    work.mkdir(parents=True, exist_ok=True)
    reference, current = (
        args.data / f"reference-{args.rows}.parquet",
        args.data / f"current-{args.rows}.parquet",
    )
    with console.status("writing the data"):
        write_table(reference, args.rows, drifted=False, seed=1)
        write_table(current, args.rows, drifted=True, seed=2)
    report: dict[str, Any] = {"part1": part_one(args, reference, current, work)}
    if not args.no_big:
        big = args.data / f"current-{args.big_rows}.parquet"
        with console.status(f"writing {args.big_rows:,} rows"):
            write_table(big, args.big_rows, drifted=True, seed=3)
        report["part2"] = part_two(args, reference, big, work)
    console.print(
        results_table(f"1. Drift of {args.rows:,} x 20 against {args.rows:,} rows", report["part1"])
    )
    console.print("flagged: drifted features caught of 6, stable features flagged of 14")
    console.print(f"agreement with scipy: {report['part1']['checks']}")
    evidently = report["part1"]["results"].get("evidently/default", {})
    loopml = report["part1"]["results"]["loopml/default"]
    if evidently.get("drift_seconds") and loopml.get("drift_seconds"):
        speedup = evidently["drift_seconds"] / loopml["drift_seconds"]
        verdict = "met" if speedup >= SPEED_TARGET else "NOT met"
        console.print(
            f"Evidently default / loopml default: x{speedup:.1f} (target x{SPEED_TARGET:g}: {verdict})"
        )
    if "part2" in report:
        console.print(results_table(f"2. {args.big_rows:,} current rows", report["part2"]))
        console.print(f"loopml under 2 GB: {report['part2']['checks']['loopml_under_2_gb']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str))
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
