"""NannyML's side of benchmarks/monitoring.py: `UnivariateDriftCalculator`, run in NannyML's own venv.

The columns' types come from the command line (`treat_as_numerical` / `treat_as_categorical`, nothing
inferred). `--mode default` keeps NannyML's default methods: the Jensen-Shannon distance for both kinds of
column (numeric columns binned on the reference with numpy's 'doane' rule). `--mode tests` asks for
`kolmogorov_smirnov` (continuous) and `chi2` (categorical).

The whole current file is one chunk. `--chunking one` (the default) makes the reference one chunk too
(`chunk_number=1`); NannyML derives its alert thresholds from the spread of the method over the reference
chunks, so with one reference chunk the threshold of every distance (JS, KS) is the reference's drift against
itself, 0, and any nonzero distance is an alert. `--chunking current-size` uses `chunk_size=` the current
file's row count instead: the current file is still one chunk and the reference is cut into chunks of that
size, which gives the thresholds NannyML means to give (mean ± 3 std over those chunks).

What goes into the JSON: NannyML's value for the method ("drift_score"; also "statistic" for the KS D and
the chi-squared statistic), its alert ("drifted"; for chi2 that is p < 0.05) and its thresholds. The chi-squared
p-value is not in NannyML's result table: it is read from the fitted method (`Chi2Statistic._p_value`, set by
the last chunk calculated, the current file's). NannyML computes no p-value for KS ("p_value" null). With
10,000 or more reference rows NannyML's KS is its "estimated" one: the reference is binned into 10,000
equal-width bins and D is taken at the bin edges.

drift_seconds times `fit(reference)` plus `calculate(current)`.

    .bench/nannyml/bin/python benchmarks/peers/nannyml_drift.py --reference ref.parquet \\
        --current cur.parquet --numeric a,b,c --categorical d,e --mode tests --output nannyml.json
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

from _runner import arguments, flag, number, run

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # NannyML sends usage events to Segment otherwise


def chunking_option(parser) -> None:
    parser.add_argument(
        "--chunking",
        choices=["one", "current-size"],
        default="one",
        help="one: chunk_number=1 (reference one chunk too); current-size: chunk_size=rows of the current file",
    )


def drift(reference, current, args, report) -> dict[str, Any]:
    import nannyml

    # One chunk is what we ask for: NannyML warns about it once per column and method.
    warnings.filterwarnings("ignore", message="The resulting number of chunks is too low")
    numeric, categorical = args.numeric, args.categorical
    methods = (
        {"continuous_methods": ["kolmogorov_smirnov"], "categorical_methods": ["chi2"]}
        if args.mode == "tests"
        else {}
    )
    chunking = {"chunk_number": 1} if args.chunking == "one" else {"chunk_size": len(current)}
    report["chunking"] = args.chunking

    started = time.perf_counter()
    calculator = nannyml.UnivariateDriftCalculator(
        column_names=[*numeric, *categorical],
        treat_as_numerical=numeric,
        treat_as_categorical=categorical,
        **chunking,
        **methods,
    )
    calculator.fit(reference)
    result = calculator.calculate(current)
    report["drift_seconds"] = time.perf_counter() - started

    table = result.filter(period="analysis").to_df()
    if len(table) != 1:
        raise RuntimeError(f"expected one analysis chunk, NannyML made {len(table)}")
    row = table.iloc[0]
    features: dict[str, Any] = {}
    for column in [*numeric, *categorical]:
        fitted = calculator._column_to_models_mapping[column]
        if len(fitted) != 1:
            raise RuntimeError(f"expected one method for {column}, NannyML has {len(fitted)}")
        method = fitted[0]
        name = method.column_name  # 'jensen_shannon', 'kolmogorov_smirnov', 'chi2', ...
        value = number(row[(column, name, "value")])
        is_statistic = name in ("kolmogorov_smirnov", "chi2")
        features[column] = {
            "method": name,
            "statistic": value if is_statistic else None,
            "p_value": number(getattr(method, "_p_value", None)) if name == "chi2" else None,
            "drift_score": value,
            "drifted": flag(row[(column, name, "alert")]),
            "upper_threshold": number(row[(column, name, "upper_threshold")]),
            "lower_threshold": number(row[(column, name, "lower_threshold")]),
        }
        if name == "kolmogorov_smirnov":
            features[column]["calculation_method"] = (
                "estimated" if getattr(method, "_ref_rel_freqs", None) is not None else "exact"
            )
    return features


if __name__ == "__main__":
    args = arguments("NannyML UnivariateDriftCalculator over two Parquet files", chunking_option)
    run("nannyml", "nannyml", args, drift)
