"""One pass of monitoring over an endpoint: per window and version, drift, data quality and performance.

Each window's logged inputs are counted in the version's reference profile (stored at registration; a version
registered without one is profiled once from its training snapshot), so a pass never re-reads the training
set and its memory follows the window. Labels are read as they stand at `now`: a window's performance fills
in as they arrive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from loopml.data.profiles import Profile, ReferenceProfile, profile_frame
from loopml.data.snapshots import load_snapshot
from loopml.errors import ValidationError
from loopml.monitoring.drift import DriftReport, DriftSettings
from loopml.monitoring.model_drift import logged_inputs, window_drift
from loopml.monitoring.performance import SCORED, PerformanceSettings, WindowPerformance, performance
from loopml.monitoring.quality import QualityCheck, QualitySettings, check_quality
from loopml.monitoring.windows import WindowSpec, cut
from loopml.registry.models import ModelVersion
from loopml.serving.prediction_log import read_labelled_predictions

if TYPE_CHECKING:
    from loopml.project import Project


@dataclass(frozen=True)
class MonitorSettings:
    """Windows, the three monitors' settings, and how far the model metric may fall below validation."""

    window: WindowSpec = field(default_factory=lambda: WindowSpec.tumbling(timedelta(days=1)))
    drift: DriftSettings = field(default_factory=DriftSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    performance: PerformanceSettings = field(default_factory=PerformanceSettings)
    metric: str = "roc_auc"
    metric_drop_warning: float = 0.05
    metric_drop_critical: float = 0.10

    def __post_init__(self) -> None:
        if not 0 <= self.metric_drop_warning <= self.metric_drop_critical:
            raise ValidationError(
                "Metric drops must satisfy 0 <= warning <= critical; got "
                f"{self.metric_drop_warning} and {self.metric_drop_critical}."
            )


@dataclass(frozen=True)
class WindowResult:
    """Everything monitoring found in one window of one version."""

    endpoint: str
    model_name: str
    version: int
    start: datetime
    end: datetime
    predictions: int
    drift: DriftReport
    quality: list[QualityCheck]
    performance: WindowPerformance
    baseline: float | None  # the model metric at validation, when the registry has it
    metric: str = "roc_auc"
    profile: Profile | None = None  # the window's inputs, counted in the reference's bins (for reports)

    @property
    def metric_drop(self) -> float | None:
        """How far the window's model metric is below validation (None when either is unknown)."""
        value = self.performance.metrics.get(self.metric) if self.performance.status == SCORED else None
        return None if value is None or self.baseline is None else self.baseline - value

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "model_name": self.model_name,
            "version": self.version,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "predictions": self.predictions,
            "drift": self.drift.to_dict(),
            "quality": [check.to_dict() for check in self.quality],
            "performance": self.performance.to_dict(),
            "metric": self.metric,
            "baseline": self.baseline,
            "metric_drop": self.metric_drop,
        }


class Monitor:
    """Runs drift, data quality and performance over an endpoint's prediction log."""

    def __init__(self, project: Project, settings: MonitorSettings | None = None) -> None:
        self.project = project
        self.settings = settings or MonitorSettings()
        self._references: dict[tuple[str, int], ReferenceProfile] = {}

    def run(
        self, endpoint: str, start: datetime, end: datetime, *, now: datetime | None = None
    ) -> list[WindowResult]:
        """Results per window in [start, end) of every version that served the endpoint, labels as of `now`."""
        now = now or self.project.clock.now()
        log = read_labelled_predictions(
            self.project.offline, endpoint, start, end, labels_until=now, keep_unlabelled=True
        )
        results = []
        for window in cut(log, self.settings.window, endpoint, start, end):
            version = self.project.registry.get_version(window.model_name, window.version)
            results.append(self._window_result(version, window.start, window.end, window.rows, endpoint))
        return results

    def reference(self, version: ModelVersion) -> ReferenceProfile:
        """The version's reference profile: stored at registration, or profiled once from its snapshot."""
        key = (version.model_name, version.version)
        if key not in self._references:
            stored = self.project.registry.reference_profile(version)
            self._references[key] = stored if stored is not None else self._from_snapshot(version)
        return self._references[key]

    def _from_snapshot(self, version: ModelVersion) -> ReferenceProfile:
        if version.dataset_id is None:
            raise ValidationError(
                f"Model {version.ref} has neither a stored reference profile nor a training snapshot: it cannot be "
                "monitored for drift. Register a version trained by loopml, or one with its training data."
            )
        training = load_snapshot(self.project.metadata, self.project.offline, version.dataset_id)
        return ReferenceProfile(profile_frame(training, columns=version.inputs))

    def _window_result(
        self, version: ModelVersion, start: datetime, end: datetime, rows: pd.DataFrame, endpoint: str
    ) -> WindowResult:
        reference = self.reference(version)
        inputs = logged_inputs(rows) if len(rows) else pd.DataFrame()
        outputs = rows.output if len(rows) else []
        drift, window = window_drift(reference, inputs, outputs, version.inputs, self.settings.drift)
        quality = check_quality(
            reference.inputs,
            window,
            version.inputs,
            logged=list(inputs.columns) if len(rows) else None,
            settings=self.settings.quality,
        )
        baseline = version.metrics.get(self.settings.metric)
        return WindowResult(
            endpoint,
            version.model_name,
            version.version,
            start,
            end,
            len(rows),
            drift,
            quality,
            performance(rows, self.settings.performance),
            float(baseline) if baseline is not None else None,
            self.settings.metric,
            window,
        )


def newest_windows(results: Sequence[WindowResult]) -> list[WindowResult]:
    """The newest window of each endpoint and version (what alerts and gauges describe)."""
    newest: dict[tuple[str, str, int], WindowResult] = {}
    for result in results:
        key = (result.endpoint, result.model_name, result.version)
        if key not in newest or result.end > newest[key].end:
            newest[key] = result
    return list(newest.values())
