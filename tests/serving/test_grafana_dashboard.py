"""The Grafana dashboard in deploy/grafana only charts metrics the serving app defines, and charts all of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "loopml-serving.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
# The serving metrics issue 5 asks the dashboard to chart.
CHARTED = {
    "loopml_requests_total",
    "loopml_request_duration_seconds",
    "loopml_requests_in_flight",
    "loopml_batch_size",
    "loopml_prediction_cache_requests_total",
    "loopml_prediction_log_queue_depth",
    "loopml_prediction_log_dropped_total",
    "loopml_shadow_predictions_total",
    "loopml_feature_read_seconds",
    "loopml_feature_age_seconds",
}
# Metrics with an `endpoint` label: their charts follow the dashboard's endpoint selector.
BY_ENDPOINT = {
    "loopml_requests_total",
    "loopml_request_duration_seconds",
    "loopml_batch_size",
    "loopml_prediction_cache_requests_total",
    "loopml_shadow_predictions_total",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    names = set()
    for name in re.findall(r"\bloopml_[a-z0-9_]+", expr):
        for suffix in HISTOGRAM_SUFFIXES:
            name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_every_metric_in_the_dashboard_is_defined_by_the_app(dashboard: dict[str, Any]) -> None:
    try:
        from loopml.serving.metrics import METRIC_NAMES
    except ImportError as exc:
        pytest.fail(
            "loopml.serving.metrics.METRIC_NAMES (a tuple of the app's metric names, without the "
            f"_bucket/_count/_sum suffixes) is needed to check the dashboard: {exc}"
        )
    charted = set().union(*(metric_names(e) for e in expressions(dashboard)))
    unknown = sorted(charted - set(METRIC_NAMES))
    assert not unknown, f"The dashboard charts metrics the app does not define: {unknown}"


def test_dashboard_charts_every_serving_metric(dashboard: dict[str, Any]) -> None:
    charted = set().union(*(metric_names(e) for e in expressions(dashboard)))
    assert sorted(CHARTED - charted) == []


def test_charts_of_endpoint_metrics_follow_the_endpoint_variable(dashboard: dict[str, Any]) -> None:
    unfiltered = [
        expr
        for expr in expressions(dashboard)
        for selector in re.findall(r"\b(loopml_[a-z0-9_]+)(\{[^}]*\})?", expr)
        if selector[0]
        and metric_names(selector[0]) & BY_ENDPOINT
        and 'endpoint=~"$endpoint"' not in selector[1]
    ]
    assert unfiltered == []


def test_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == "loopml-serving"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    endpoint = variables["endpoint"]
    assert endpoint["definition"] == "label_values(loopml_requests_total, endpoint)"
    assert endpoint["datasource"] == DATASOURCE
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
