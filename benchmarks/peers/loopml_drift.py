"""loopml's side of benchmarks/monitoring.py, in a process of its own like the peers' (same JSON, same reads).

`--mode default`: `loopml.monitoring.compare` with its default methods (normalised Wasserstein for numbers and
Jensen-Shannon for categories on samples this large). `--mode tests`: a rule per column asking for the
Kolmogorov-Smirnov test (numbers, on the raw values) and the chi-squared test (categories). Both read the two
files whole with pandas, as the peers do; drift_seconds times `compare` only.

`--profiled` is the monitor's own path: the reference is read and profiled (its quantile bins), the current
file is streamed in batches and counted in those bins (`loopml.data.profiles.profile_parquet`), then
`compare_profiles`. The current file is never held in memory; drift_seconds times all of it, reads included.

    .venv/bin/python benchmarks/peers/loopml_drift.py --reference ref.parquet --current cur.parquet \\
        --numeric a,b,c --categorical d,e --mode tests --output loopml.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _runner import arguments, peak_rss_bytes, peak_vmhwm_bytes, run

from loopml.data.profiles import profile_frame, profile_parquet
from loopml.monitoring import DriftReport, DriftSettings, Rule, compare, compare_profiles


def settings(args: argparse.Namespace) -> DriftSettings:
    if args.mode == "default":
        return DriftSettings()
    rules = {name: Rule(method="ks") for name in args.numeric}
    rules |= {name: Rule(method="chi_squared") for name in args.categorical}
    return DriftSettings(rules=rules)


def drift(reference: Any, current: Any, args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    result = compare(reference, current, categorical=args.categorical, settings=settings(args))
    report["drift_seconds"] = time.perf_counter() - started
    return features(result)


def profiled(args: argparse.Namespace) -> None:
    """The streaming path, with the runner's JSON shape (rows, timings, memory, features)."""
    import json

    import pandas as pd
    import pyarrow.parquet as pq

    columns = [*args.numeric, *args.categorical]
    report: dict[str, Any] = {"peer": "loopml", "mode": f"{args.mode} (profiled)", "read_seconds": None}
    started = time.perf_counter()
    reference_profile = profile_frame(
        pd.read_parquet(args.reference, columns=columns), categorical=args.categorical
    )
    window = profile_parquet(args.current, reference=reference_profile, columns=columns)
    result = compare_profiles(reference_profile, window, columns, settings=settings(args))
    report["drift_seconds"] = time.perf_counter() - started
    report["rows_reference"] = reference_profile.rows
    report["rows_current"] = pq.ParquetFile(args.current).metadata.num_rows
    report["features"] = features(result)
    report["peak_rss_bytes"] = peak_rss_bytes()
    report["peak_vmhwm_bytes"] = peak_vmhwm_bytes()
    args.output.write_text(json.dumps(report, indent=2))


def features(result: DriftReport) -> dict[str, Any]:
    return {
        f.feature: {
            "method": f.method,
            "statistic": f.statistic,
            "p_value": f.p_value,
            "drift_score": f.p_value if f.p_value is not None else f.statistic,
            "drifted": f.drifted,
            "severity": f.severity,
        }
        for f in result.features
    }


def profiled_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profiled",
        action="store_true",
        help="profile the reference, stream the current file through its bins",
    )


if __name__ == "__main__":
    arguments_ = arguments("loopml drift over two Parquet files", profiled_option)
    if arguments_.profiled:
        profiled(arguments_)
    else:
        run("loopml", "loopml", arguments_, drift)
