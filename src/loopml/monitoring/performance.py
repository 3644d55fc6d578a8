"""Model performance from delayed labels: predictions joined to their labels by prediction id, per window.

Labels arrive hours or weeks after the prediction; a window is keyed on prediction time, so its metrics
change as labels come in. Label coverage (labelled / predictions) is reported for every window; a window
below `min_coverage` (or with fewer than `min_labels` labels) is flagged and not scored: metrics from the few
labels that arrived first are biased towards whatever gets labelled first.

Classification (scores are probabilities of the positive class, cut at `threshold`): accuracy, precision,
recall, F1, ROC AUC and log loss. Regression: RMSE and MAE. Each is scikit-learn's on the joined rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as sk

from loopml.errors import ValidationError

CLASSIFICATION, REGRESSION = "classification", "regression"
SCORED, LOW_COVERAGE, EMPTY = "scored", "low_coverage", "empty"


@dataclass(frozen=True)
class PerformanceSettings:
    """What counts as enough labels, and how scores become classes."""

    task: str = CLASSIFICATION
    threshold: float = 0.5
    min_coverage: float = 0.5
    min_labels: int = 30

    def __post_init__(self) -> None:
        if self.task not in (CLASSIFICATION, REGRESSION):
            raise ValidationError(f"Unknown task {self.task!r}; use {CLASSIFICATION!r} or {REGRESSION!r}.")
        if not 0 <= self.min_coverage <= 1:
            raise ValidationError(f"min_coverage is a share in [0, 1], got {self.min_coverage}.")
        if not 0 < self.threshold < 1:
            raise ValidationError(f"threshold is a probability in (0, 1), got {self.threshold}.")


@dataclass(frozen=True)
class WindowPerformance:
    """A window's label coverage and, when it has enough labels, its metrics."""

    predictions: int
    labelled: int
    status: str
    reason: str = ""
    metrics: dict[str, float | None] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        return self.labelled / self.predictions if self.predictions else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "predictions": self.predictions,
            "labelled": self.labelled,
            "coverage": self.coverage,
            "status": self.status,
            "reason": self.reason,
            "metrics": self.metrics,
        }


def performance(rows: pd.DataFrame, settings: PerformanceSettings | None = None) -> WindowPerformance:
    """Coverage and metrics of one window's predictions (`output`) with their labels (`label`, null when
    none has arrived)."""
    settings = settings or PerformanceSettings()
    total = len(rows)
    if not total:
        return WindowPerformance(0, 0, EMPTY, "no predictions in the window")
    labelled = rows[rows.label.notna() & rows.output.notna()]
    count = len(labelled)
    coverage = count / total
    if coverage < settings.min_coverage or count < settings.min_labels:
        reason = (
            f"{count} of {total} predictions labelled ({coverage:.0%}); "
            f"scoring needs {settings.min_coverage:.0%} and at least {settings.min_labels}"
        )
        return WindowPerformance(total, count, LOW_COVERAGE, reason)
    truth = labelled.label.to_numpy(dtype=float)
    scores = labelled.output.to_numpy(dtype=float)
    if settings.task == REGRESSION:
        return WindowPerformance(total, count, SCORED, metrics=_regression(truth, scores))
    classes = set(np.unique(truth))
    if not classes <= {0.0, 1.0}:
        raise ValidationError(
            f"Classification labels must be 0 or 1; the window has {sorted(classes)[:5]}. Use task='regression'."
        )
    values, reason = _classification(truth.astype(int), scores, settings.threshold)
    return WindowPerformance(total, count, SCORED, reason, values)


def _classification(
    truth: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[dict[str, float | None], str]:
    predicted = (scores >= threshold).astype(int)
    values: dict[str, float | None] = {
        "accuracy": float(sk.accuracy_score(truth, predicted)),
        "precision": float(sk.precision_score(truth, predicted, zero_division=0)),
        "recall": float(sk.recall_score(truth, predicted, zero_division=0)),
        "f1": float(sk.f1_score(truth, predicted, zero_division=0)),
        "log_loss": float(sk.log_loss(truth, np.clip(scores, 0.0, 1.0), labels=[0, 1])),
    }
    if len(set(truth)) < 2:
        values["roc_auc"] = None
        return values, f"ROC AUC undefined: every label is {truth[0]}"
    values["roc_auc"] = float(sk.roc_auc_score(truth, scores))
    return values, ""


def _regression(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float | None]:
    return {
        "rmse": math.sqrt(float(sk.mean_squared_error(truth, predicted))),
        "mae": float(sk.mean_absolute_error(truth, predicted)),
    }
