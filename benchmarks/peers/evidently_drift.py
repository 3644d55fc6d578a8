"""Evidently's side of benchmarks/monitoring.py: a `DataDriftPreset` report, run in Evidently's own venv.

The columns' types come from the command line (an explicit `DataDefinition`, nothing inferred). `--mode default`
leaves the choice of test to Evidently (`num_method`/`cat_method` unset): with more than 1,000 reference rows
the normed Wasserstein distance for numeric columns (more than 5 distinct values, else Jensen-Shannon) and the
Jensen-Shannon distance for categorical ones; with 1,000 or fewer, KS for numeric (chi-squared for 3-5 distinct
values, z-test for 2) and chi-squared for categorical (z-test for 2 categories). `--mode tests` sets
`num_method="ks"` and `cat_method="chisquare"`.

Evidently reports one number per column, its drift score: the p-value for a test (KS, chi-squared), the
distance otherwise. A test's p-value goes to "p_value" (its statistic is not exposed: "statistic" stays null),
and every score goes to "drift_score". "drifted" is the verdict of the report's own per-column test
(include_tests=True): FAIL means drift. Evidently's "chisquare" is a goodness-of-fit test of the current counts
against the reference proportions (scipy.stats.chisquare), not the 2×k contingency test.

drift_seconds times `Report.run` only; building the two `Dataset`s is prepare_seconds.

    .bench/evidently/bin/python benchmarks/peers/evidently_drift.py --reference ref.parquet \\
        --current cur.parquet --numeric a,b,c --categorical d,e --mode tests --output evidently.json
"""

from __future__ import annotations

import os
import time
from typing import Any

from _runner import arguments, flag, number, run

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's telemetry (its UI only, but to be sure)


def is_p_value(method: str) -> bool:
    """Whether Evidently's score for `method` (a stattest's name or display name) is a p-value."""
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    for by_type in _registered_stat_tests.values():
        for test in by_type.values():
            if method in (test.name, test.display_name):
                return "p_value" in test.display_name
    return "p_value" in method


def drift(reference, current, args, report) -> dict[str, Any]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric, categorical = args.numeric, args.categorical
    columns = [*numeric, *categorical]
    methods = {"num_method": "ks", "cat_method": "chisquare"} if args.mode == "tests" else {}

    started = time.perf_counter()
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    reference_data = Dataset.from_pandas(reference, data_definition=definition)
    current_data = Dataset.from_pandas(current, data_definition=definition)
    report["prepare_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    snapshot = Report([DataDriftPreset(columns=columns, **methods)], include_tests=True).run(
        current_data=current_data, reference_data=reference_data
    )
    report["drift_seconds"] = time.perf_counter() - started

    result = snapshot.dict()
    verdicts: dict[str, bool | None] = {}
    for test in result.get("tests", []):
        params = (test.get("metric_config") or {}).get("params") or {}
        if params.get("type") == "evidently:metric_v2:ValueDrift":
            status = test.get("status")
            verdicts[params["column"]] = {"FAIL": True, "SUCCESS": False}.get(status)

    features: dict[str, Any] = {}
    for metric in result["metrics"]:
        config = metric["config"]
        if config.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        column, method, score = config["column"], str(config.get("method")), number(metric["value"])
        features[column] = {
            "method": method,
            "statistic": None,
            "p_value": score if is_p_value(method) else None,
            "drift_score": score,
            "drifted": flag(verdicts.get(column)),
            "threshold": number(config.get("threshold")),
        }
    missing = [c for c in columns if c not in features]
    if missing:
        raise RuntimeError(f"Evidently's report has no ValueDrift for {missing}")
    return {c: features[c] for c in columns}


if __name__ == "__main__":
    run("evidently", "evidently", arguments("Evidently DataDriftPreset over two Parquet files"), drift)
