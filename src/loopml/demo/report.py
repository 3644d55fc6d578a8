"""The demo's HTML report: one self-contained page with charts, tables and the decision log."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from loopml.monitoring.charts import LineChart, Marker, Series
from loopml.training.evaluation import classification_metrics

if TYPE_CHECKING:
    from loopml.demo.runner import DemoResult
    from loopml.project import Project

P_VALUE_FLOOR = 1e-20
ROLLING_DAYS = 3


def write_report(result: DemoResult, project: Project) -> Path:
    days = result.days
    index = {d.date: i for i, d in enumerate(days)}
    x_labels = {float(i): d.date[5:] for i, d in enumerate(days) if i % 5 == 0}
    markers = []
    if result.change_date in index:
        markers.append(Marker(index[result.change_date], "world changes", "#111827"))
    if result.first_drift_date in index:
        markers.append(Marker(index[result.first_drift_date], "drift detected", "#dc2626"))
    markers += [Marker(index[date], f"v{version} promoted", "#16a34a") for date, version in result.promotions]

    served, v1 = _rolling_auc(result, "output"), _rolling_auc(result, "v1_output")
    auc = LineChart(
        f"ROC AUC of live predictions over the last {ROLLING_DAYS} days (labels from the world's ground truth)",
        [
            Series("served by the loop", [(i, served.get(d.date, math.nan)) for i, d in enumerate(days)]),
            Series(
                "v1 had it never been replaced", [(i, v1.get(d.date, math.nan)) for i, d in enumerate(days)]
            ),
        ],
        x_labels=x_labels,
        markers=markers,
        y_range=(0.4, 1.0),
    )
    threshold = result.config.policy["drift_share_threshold"]
    drift = LineChart(
        "Share of drifted model inputs (champion's training set vs the last two days of predictions)",
        [
            Series(
                "drift share",
                [(i, d.decision.evidence.get("drift_share", math.nan)) for i, d in enumerate(days)],
            )
        ],
        x_labels=x_labels,
        markers=markers,
        thresholds=[(threshold, f"retrain threshold {threshold}")],
        y_range=(0, 1),
    )
    features = sorted({f for d in days for f in d.decision.evidence.get("p_values", {})})
    p_floor = -math.log10(result.config.policy["p_value_threshold"])
    p_values = LineChart(
        "Evidence per input: −log10(p-value), capped at 20 (KS for numbers, chi-squared for categories)",
        [
            Series(
                f,
                [
                    (i, _minus_log10(d.decision.evidence.get("p_values", {}).get(f)))
                    for i, d in enumerate(days)
                ],
            )
            for f in features
        ],
        x_labels=x_labels,
        markers=markers,
        thresholds=[(p_floor, "drift threshold")],
        y_range=(0, 20),
        height=320,
    )
    events = [
        e
        for e in project.metadata.events()
        if e.kind
        in {
            "alias.moved",
            "gate.passed",
            "gate.failed",
            "model.registered",
            "endpoint.deployed",
            "rollout.started",
            "rollout.advanced",
            "rollout.promoted",
            "rollout.rolled_back",
        }
    ]
    charts = [auc.to_svg(), drift.to_svg(), p_values.to_svg()]
    if result.rollouts:
        charts.append(_traffic_chart(result, index))
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("loopml.demo", "."), autoescape=jinja2.select_autoescape(["html", "j2"])
    )
    html = environment.get_template("report.html.j2").render(
        result=result,
        charts=charts,
        rollouts=[r for r in result.rollouts if r.action not in ("held", "analysed")],
        comparison=result.comparison.to_dict("records"),
        events=events,
        decisions=[d for d in days if d.decision.action not in {"none", "skipped"}],
    )
    result.report_path.write_text(html)
    return result.report_path


def _traffic_chart(result: DemoResult, index: dict[str, int]) -> str:
    """The share of traffic each rollout's candidate had over time (shadow: mirrored, 0% served)."""
    series = []
    for rollout in sorted({r.rollout for r in result.rollouts}):
        records = [r for r in result.rollouts if r.rollout == rollout]
        points = [(_day_position(r.time, index), r.share) for r in records if r.time[:10] in index]
        outcome = records[-1].action
        series.append(Series(f"v{records[0].candidate} ({outcome})", points))
    x_labels = {float(i): d[5:] for d, i in index.items() if i % 5 == 0}
    return LineChart(
        "Candidates' share of served traffic during their rollouts",
        series,
        x_labels=x_labels,
        y_range=(0, 100),
    ).to_svg()


def _day_position(time: str, index: dict[str, int]) -> float:
    hours = int(time[11:13]) + int(time[14:16]) / 60
    return index[time[:10]] + hours / 24


def _minus_log10(p: float | None) -> float:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return math.nan
    return min(20.0, -math.log10(max(p, P_VALUE_FLOOR)))


def _rolling_auc(result: DemoResult, column: str) -> dict[str, float]:
    """ROC AUC per day over that day's and the previous days' predictions (single days hold few frauds)."""
    dates = [d.date for d in result.days]
    auc = {}
    for index, date in enumerate(dates):
        window = result.served[result.served.date.isin(dates[max(0, index - ROLLING_DAYS + 1) : index + 1])]
        auc[date] = classification_metrics(window.is_fraud.to_numpy(), window[column].to_numpy())["roc_auc"]
    return auc
