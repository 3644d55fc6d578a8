"""The model-health dashboard charts every monitoring gauge, only those, and follows its selectors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from loopml.monitoring.metrics import METRIC_NAMES, MonitorMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "loopml-model-health.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_names_are_the_gauges_the_monitor_defines() -> None:
    defined = {metric.name for metric in MonitorMetrics().registry.collect()}
    assert defined == set(METRIC_NAMES)


def test_the_dashboard_charts_every_gauge_and_nothing_else(dashboard: dict[str, Any]) -> None:
    charted = {name for expr in expressions(dashboard) for name in re.findall(r"\bloopml_[a-z0-9_]+", expr)}
    assert charted == set(METRIC_NAMES)


def test_every_chart_follows_the_endpoint_selector_and_is_importable(dashboard: dict[str, Any]) -> None:
    for expr in expressions(dashboard):
        assert 'endpoint=~"$endpoint"' in expr, expr
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    assert dashboard["uid"] == "loopml-model-health" and dashboard["schemaVersion"] == 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"DS_PROMETHEUS", "endpoint", "version"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE and panel["targets"], panel["title"]
            assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
