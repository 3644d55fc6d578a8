"""A monitoring pass over a served endpoint: windows, alerts fired once, repeated after the cool-down,
escalated, resolved, sent to a real webhook, and the Prometheus gauges."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pytest

from loopml.monitoring.alerts import ESCALATED, FIRED, REPEATED, RESOLVED_EVENT, AlertManager, WebhookSink
from loopml.monitoring.drift import CRITICAL
from loopml.monitoring.metrics import MonitorMetrics
from loopml.monitoring.monitor import Monitor, MonitorSettings
from loopml.monitoring.performance import LOW_COVERAGE, SCORED
from tests.helpers import START


def test_a_pass_gives_drift_quality_and_performance_per_daily_window(served) -> None:
    project, version = served
    results = Monitor(project).run("toy", START + pd.Timedelta(days=9), START + pd.Timedelta(days=12))
    assert [(r.version, r.start - START) for r in results] == [(1, timedelta(days=d)) for d in (9, 10, 11)]
    first, _, last = results
    assert first.performance.status == SCORED and first.performance.coverage == 1.0
    assert set(first.performance.metrics) >= {"roc_auc", "accuracy", "log_loss"}
    assert first.baseline == pytest.approx(version.metrics["roc_auc"])
    assert last.performance.status == LOW_COVERAGE and last.performance.labelled == 0
    assert first.drift.drifted_features == [] and all(c.passed for c in first.quality)
    assert "amount" in last.drift.drifted_features
    assert any(c.feature == "amount" and c.check == "range" and not c.passed for c in last.quality)
    assert json.loads(json.dumps(last.to_dict(), default=str))["drift"]["features"][0]["feature"]


def test_alerts_fire_once_repeat_after_the_cooldown_and_resolve(served, clock, webhook) -> None:
    project, _ = served
    url, received = webhook
    settings = MonitorSettings(metric_drop_warning=0.5, metric_drop_critical=0.5)  # drift and quality only
    monitor = Monitor(project, settings)
    manager = AlertManager(project.metadata, [WebhookSink(url)], cooldown=timedelta(hours=6))
    drifted = monitor.run("toy", START + pd.Timedelta(days=11), START + pd.Timedelta(days=12))

    fired = manager.evaluate(drifted, settings)
    keys = {n.alert.key for n in fired}
    assert {n.event for n in fired} == {FIRED}
    assert "toy/toy/1/drift/amount" in keys and "toy/toy/1/quality.range/amount" in keys
    assert received and {a["key"] for a in received[0]["alerts"]} == keys
    amount = next(n.alert for n in fired if n.alert.key == "toy/toy/1/drift/amount")
    assert amount.severity == CRITICAL and amount.message.startswith("ks p=")
    assert {a["key"] for a in manager.firing("toy")} == keys

    assert manager.evaluate(drifted, settings) == []  # the same conditions: de-duplicated
    clock.advance(timedelta(hours=7))
    assert {n.event for n in manager.evaluate(drifted, settings)} == {REPEATED}

    calm = monitor.run("toy", START + pd.Timedelta(days=9), START + pd.Timedelta(days=10))
    resolved = manager.evaluate(calm, settings)
    assert {n.event for n in resolved} == {RESOLVED_EVENT} and {n.alert.key for n in resolved} == keys
    assert manager.firing("toy") == []
    kinds = [e.kind for e in project.metadata.events(subject_prefix="alert:toy/toy/1/drift/amount")]
    assert kinds == [FIRED, REPEATED, RESOLVED_EVENT]


def test_a_warning_that_turns_critical_is_sent_at_once(served) -> None:
    project, _ = served
    calm_day = (START + pd.Timedelta(days=9), START + pd.Timedelta(days=10))
    manager = AlertManager(project.metadata, cooldown=timedelta(days=1))
    default = MonitorSettings()
    [result] = Monitor(project, default).run("toy", *calm_day)
    assert result.metric_drop == pytest.approx(result.baseline - result.performance.metrics["roc_auc"])
    assert 0.05 <= result.metric_drop < 0.10  # the labelled day scores a little below validation
    [warning] = [n for n in manager.evaluate([result], default) if n.alert.check == "performance"]
    assert (warning.event, warning.alert.severity) == (FIRED, "warning")
    assert "roc_auc" in warning.alert.message and "below validation" in warning.alert.message
    strict = MonitorSettings(metric_drop_warning=0.02, metric_drop_critical=0.05)
    [critical] = [n for n in manager.evaluate([result], strict) if n.alert.check == "performance"]
    assert (critical.event, critical.alert.severity) == (ESCALATED, CRITICAL)
    assert [n for n in manager.evaluate([result], strict) if n.alert.check == "performance"] == []


def test_gauges_follow_the_newest_window(served) -> None:
    project, _ = served
    settings = MonitorSettings()
    results = Monitor(project, settings).run(
        "toy", START + pd.Timedelta(days=9), START + pd.Timedelta(days=12)
    )
    manager = AlertManager(project.metadata)
    manager.evaluate(results, settings)
    metrics = MonitorMetrics()
    metrics.update(results, manager.firing())
    text = metrics.exposition().decode()
    assert 'loopml_drift_severity{endpoint="toy",feature="amount",version="toy/1"} 2.0' in text
    assert 'loopml_label_coverage{endpoint="toy",version="toy/1"} 0.0' in text  # day 11 has no labels yet
    assert 'loopml_monitor_alerts_firing{endpoint="toy",severity="critical"}' in text
    assert 'loopml_drift_score{endpoint="toy",feature="score",method=' in text
    path = project.path / "monitor.prom"
    metrics.write(path)
    assert path.read_text() == text
