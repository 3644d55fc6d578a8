"""Prometheus gauges of model health, from the newest window of each version monitored.

Labels are endpoint, version and a bounded name (feature, check, metric, severity): never per prediction.
`exposition()` gives the text format for a scrape (`loopml monitor run --metrics-port`) and `write()` a file
for node_exporter's textfile collector (`--metrics-file`), replaced atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from loopml.monitoring.drift import SEVERITY_ORDER
from loopml.monitoring.monitor import WindowResult, newest_windows
from loopml.monitoring.performance import SCORED

METRIC_NAMES = (
    "loopml_drift_score",
    "loopml_drift_severity",
    "loopml_drift_share",
    "loopml_data_quality_failures",
    "loopml_label_coverage",
    "loopml_model_metric",
    "loopml_monitor_window_predictions",
    "loopml_monitor_alerts_firing",
)


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["endpoint", "version"]
        self.drift_score = self._gauge(
            "loopml_drift_score",
            "The drift method's statistic per feature, output included.",
            [*labels, "feature", "method"],
        )
        self.drift_severity = self._gauge(
            "loopml_drift_severity",
            "Drift severity per feature: 0 ok, 1 warning, 2 critical, -1 no data.",
            [*labels, "feature"],
        )
        self.drift_share = self._gauge(
            "loopml_drift_share", "Share of evaluated features that drifted.", labels
        )
        self.quality_failures = self._gauge(
            "loopml_data_quality_failures",
            "Data-quality rules failing in the newest window, by rule.",
            [*labels, "check"],
        )
        self.label_coverage = self._gauge(
            "loopml_label_coverage", "Share of the newest window's predictions with a label.", labels
        )
        self.model_metric = self._gauge(
            "loopml_model_metric",
            "Model metric in the newest window with enough labels.",
            [*labels, "metric"],
        )
        self.window_predictions = self._gauge(
            "loopml_monitor_window_predictions", "Predictions in the newest window.", labels
        )
        self.alerts_firing = self._gauge(
            "loopml_monitor_alerts_firing", "Alerts firing, by severity.", ["endpoint", "severity"]
        )

    def update(self, results: Sequence[WindowResult], firing: Sequence[dict[str, Any]] = ()) -> None:
        """Set every gauge from the newest window per version (series of versions no longer seen are dropped)."""
        for gauge in self._gauges():
            gauge.clear()
        for result in newest_windows(results):
            labels = {"endpoint": result.endpoint, "version": f"{result.model_name}/{result.version}"}
            for drift in [
                *result.drift.features,
                *([result.drift.prediction] if result.drift.prediction else []),
            ]:
                if drift.statistic is not None:
                    self.drift_score.labels(**labels, feature=drift.feature, method=drift.method).set(
                        drift.statistic
                    )
                self.drift_severity.labels(**labels, feature=drift.feature).set(
                    SEVERITY_ORDER[drift.severity]
                )
            self.drift_share.labels(**labels).set(result.drift.share)
            failing: dict[str, int] = {}
            for check in result.quality:
                failing[check.check] = failing.get(check.check, 0) + (not check.passed)
            for check, count in failing.items():
                self.quality_failures.labels(**labels, check=check).set(count)
            self.label_coverage.labels(**labels).set(result.performance.coverage)
            if result.performance.status == SCORED:
                for metric, value in result.performance.metrics.items():
                    if value is not None:
                        self.model_metric.labels(**labels, metric=metric).set(value)
            self.window_predictions.labels(**labels).set(result.predictions)
        for alert in firing:
            self.alerts_firing.labels(endpoint=alert["endpoint"], severity=alert["severity"]).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def write(self, path: Path) -> None:
        """Write the text format to `path` atomically (a scrape never reads half a file)."""
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(self.exposition())
        os.replace(temporary, path)

    def _gauge(self, name: str, documentation: str, labels: list[str]) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def _gauges(self) -> list[Gauge]:
        return [
            self.drift_score,
            self.drift_severity,
            self.drift_share,
            self.quality_failures,
            self.label_coverage,
            self.model_metric,
            self.window_predictions,
            self.alerts_firing,
        ]
