"""The monitoring report: one self-contained HTML page (inline SVG, no script, no CDN) and the same as JSON.

Per version: the firing alerts, the newest window's drift table, per feature the reference and current
distributions side by side, data-quality failures, and time series over the windows of drift scores, drift
share, the model metrics and label coverage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from loopml.data.profiles import NUMERIC, ColumnProfile, ReferenceProfile
from loopml.monitoring.charts import BarChart, LineChart, Series
from loopml.monitoring.monitor import WindowResult

HISTOGRAM_BUCKETS = 20
TOP_CATEGORIES = 12


def report_data(results: Sequence[WindowResult], firing: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The report as JSON-ready data: every window's results and the alerts firing."""
    return {
        "windows": [result.to_dict() for result in results],
        "alerts": [{k: _plain(v) for k, v in alert.items()} for alert in firing],
    }


def render_report(
    title: str,
    results: Sequence[WindowResult],
    references: dict[tuple[str, int], ReferenceProfile],
    firing: Sequence[dict[str, Any]],
) -> str:
    """The HTML page."""
    versions = []
    for key in sorted({(r.model_name, r.version) for r in results}):
        windows = sorted((r for r in results if (r.model_name, r.version) == key), key=lambda r: r.start)
        newest = next((w for w in reversed(windows) if w.predictions), windows[-1])
        reference = references.get(key)
        versions.append(
            {
                "name": f"{key[0]}/{key[1]}",
                "newest": newest,
                "histograms": _histograms(reference, newest) if reference is not None else [],
                "series": _series(windows),
                "failures": [c for c in newest.quality if not c.passed],
                "alerts": [a for a in firing if (a["model_name"], a["version"]) == key],
            }
        )
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("loopml.monitoring", "."),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )
    environment.filters["num"] = _format_number
    return environment.get_template("report.html.j2").render(title=title, versions=versions, firing=firing)


def write_json(path: Path, results: Sequence[WindowResult], firing: Sequence[dict[str, Any]]) -> None:
    path.write_text(json.dumps(report_data(results, firing), indent=2, default=_plain))


def _histograms(reference: ReferenceProfile, newest: WindowResult) -> list[str]:
    if newest.profile is None:
        return []
    charts = []
    for feature in newest.drift.features:
        ref = reference.inputs.columns.get(feature.feature)
        cur = newest.profile.columns.get(feature.feature)
        if ref is None or cur is None:
            continue
        labels, shares = _numeric_shares(ref, cur) if ref.kind == NUMERIC else _category_shares(ref, cur)
        title = (
            f"{feature.feature}: {feature.method} {_format_number(feature.statistic)} ({feature.severity})"
        )
        charts.append(BarChart(title, labels, [("reference", shares[0]), ("current", shares[1])]).to_svg())
    return charts


def _numeric_shares(
    ref: ColumnProfile, cur: ColumnProfile
) -> tuple[list[str], tuple[list[float], list[float]]]:
    """Both distributions over equal-width buckets from the lowest to the highest value of either, from the
    fine quantile bins (each bin placed at its mean)."""
    assert ref.counts is not None and ref.sums is not None and cur.counts is not None and cur.sums is not None
    present = [v for v in (ref.minimum, ref.maximum, cur.minimum, cur.maximum) if v is not None]
    low, high = min(present), max(present)
    width = (high - low) / HISTOGRAM_BUCKETS or 1.0
    labels = [f"{low + width * i:.3g}" for i in range(HISTOGRAM_BUCKETS)]
    shares = []
    for profile in (ref, cur):
        counts = profile.counts.astype(float)
        means = np.divide(profile.sums, counts, out=np.zeros_like(counts), where=counts > 0)
        bucket = np.clip(((means - low) / width).astype(int), 0, HISTOGRAM_BUCKETS - 1)
        totals = np.bincount(bucket, weights=counts, minlength=HISTOGRAM_BUCKETS)
        shares.append(list(totals / totals.sum()) if totals.sum() else [0.0] * HISTOGRAM_BUCKETS)
    return labels, (shares[0], shares[1])


def _category_shares(
    ref: ColumnProfile, cur: ColumnProfile
) -> tuple[list[str], tuple[list[float], list[float]]]:
    combined = {
        c: ref.categories.get(c, 0) + cur.categories.get(c, 0) for c in {*ref.categories, *cur.categories}
    }
    labels = sorted(combined, key=lambda c: -combined[c])[:TOP_CATEGORIES]
    shares = tuple([p.categories.get(c, 0) / p.count if p.count else 0.0 for c in labels] for p in (ref, cur))
    return labels, (shares[0], shares[1])


def _series(windows: list[WindowResult]) -> list[str]:
    labels = {float(i): w.start.strftime("%m-%d %H:%M") for i, w in enumerate(windows)}
    step = max(1, len(labels) // 8)
    x_labels = {x: label for x, label in labels.items() if int(x) % step == 0}
    features = [f.feature for f in windows[-1].drift.features]
    drift = LineChart(
        "Drift statistic per feature (the method's: distance, or p-value for tests)",
        [Series(name, [(float(i), _statistic(w, name)) for i, w in enumerate(windows)]) for name in features],
        x_labels=x_labels,
    )
    share = LineChart(
        "Share of drifted features",
        [Series("drift share", [(float(i), w.drift.share) for i, w in enumerate(windows)])],
        x_labels=x_labels,
        y_range=(0, 1),
    )
    metric_names = sorted({m for w in windows for m in w.performance.metrics if m != "log_loss"})
    performance = LineChart(
        "Model metrics from labels (windows short of labels are gaps) and label coverage",
        [
            *(
                Series(name, [(float(i), _metric(w, name)) for i, w in enumerate(windows)])
                for name in metric_names
            ),
            Series(
                "label coverage",
                [(float(i), w.performance.coverage) for i, w in enumerate(windows)],
                "#6b7280",
            ),
        ],
        x_labels=x_labels,
        y_range=(0, 1),
    )
    return [drift.to_svg(), share.to_svg(), performance.to_svg()]


def _statistic(window: WindowResult, feature: str) -> float:
    found = next((f for f in window.drift.features if f.feature == feature), None)
    value = None if found is None else found.p_value if found.p_value is not None else found.statistic
    return math.nan if value is None or not math.isfinite(value) else value


def _metric(window: WindowResult, name: str) -> float:
    value = window.performance.metrics.get(name)
    return math.nan if value is None else value


def _format_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value
