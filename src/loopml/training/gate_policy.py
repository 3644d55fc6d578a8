"""What a candidate must show to be promoted: metric thresholds (value and change), slices, minimum data.

A `GatePolicy` is plain data: it travels in a model file's `promotion_policy` and is judged by
`loopml.training.gate.evaluate_candidate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, asdict, dataclass, fields
from numbers import Real
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, precision_score, recall_score

from loopml.errors import ValidationError
from loopml.training.evaluation import classification_metrics

OVERALL = "overall"
DECISION_THRESHOLD = 0.5  # where scores become labels, for the label metrics (accuracy, precision, ...)
_RANKING = ("roc_auc", "average_precision", "log_loss")  # computed together by classification_metrics


@dataclass(frozen=True)
class _Metric:
    greater_is_better: bool
    compute: Callable[[np.ndarray, np.ndarray], float] | None = None  # None: one of _RANKING


def _labelled(score: Callable[..., float], **options: Any) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda y, p: float(score(y, (p >= DECISION_THRESHOLD).astype(float), **options))


METRICS: dict[str, _Metric] = {
    "roc_auc": _Metric(True),
    "average_precision": _Metric(True),
    "log_loss": _Metric(False),
    "brier_score": _Metric(False, lambda y, p: float(brier_score_loss(y, np.clip(p, 0.0, 1.0)))),
    "accuracy": _Metric(True, _labelled(accuracy_score)),
    # NaN where undefined (no predicted or no actual positives), so the check says so instead of scoring 0
    "precision": _Metric(True, _labelled(precision_score, zero_division=np.nan)),
    "recall": _Metric(True, _labelled(recall_score, zero_division=np.nan)),
    "f1": _Metric(True, _labelled(f1_score, zero_division=np.nan)),
}


def metric_values(y_true: np.ndarray, scores: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """The named gate metrics of scores for a 0/1 label; NaN where a metric is undefined on these rows."""
    values: dict[str, float] = {}
    if any(name in _RANKING for name in names):
        ranking = classification_metrics(y_true, scores)
        values.update({name: ranking[name] for name in _RANKING})
    for name in names:
        compute = METRICS[name].compute
        if compute is not None:
            values[name] = compute(y_true, scores) if len(y_true) else math.nan
    return {name: values[name] for name in names}


@dataclass(frozen=True)
class MetricThreshold:
    """Conditions on one metric: bounds on the candidate's value, and/or a margin over the champion.

    `min_absolute_change` is in metric units, `min_relative_change` a fraction of the champion's value
    (0.01 = 1 %); both count improvement in the metric's direction, so for log_loss +0.01 means 0.01 lower.
    A negative change allows a bounded regression ("not more than 0.01 worse"). Bounds are inclusive.
    """

    metric: str
    _: KW_ONLY
    min_value: float | None = None
    max_value: float | None = None
    greater_is_better: bool | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValidationError(
                f"Unknown gate metric '{self.metric}'; known metrics: {', '.join(sorted(METRICS))}."
            )
        for name in ("min_value", "max_value", "min_absolute_change", "min_relative_change"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _finite_number(f"{self.metric} {name}", value))
        if self.conditions == {}:
            raise ValidationError(
                f"MetricThreshold('{self.metric}') sets no condition; give min_value, max_value, "
                "min_absolute_change or min_relative_change."
            )
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            raise ValidationError(
                f"{self.metric}: min_value {self.min_value} is above max_value {self.max_value}; "
                "no candidate could pass."
            )
        if self.min_relative_change is not None and not -1 <= self.min_relative_change <= 1:
            raise ValidationError(
                f"{self.metric}: min_relative_change is a fraction of the champion's value (0.05 means 5 % "
                f"better), got {self.min_relative_change}; use a value between -1 and 1."
            )
        direction = METRICS[self.metric].greater_is_better
        if self.greater_is_better is None:
            object.__setattr__(self, "greater_is_better", direction)
        elif not isinstance(self.greater_is_better, bool):
            raise ValidationError(
                f"{self.metric}: greater_is_better must be True or False, got {self.greater_is_better!r}."
            )
        elif self.greater_is_better != direction:
            raise ValidationError(
                f"{self.metric} is {'higher' if direction else 'lower'}-is-better; "
                f"greater_is_better={self.greater_is_better} would reward a worse model. Leave it unset."
            )

    @property
    def conditions(self) -> dict[str, float]:
        """The conditions that are set, by name, in a fixed order."""
        names = ("min_value", "max_value", "min_absolute_change", "min_relative_change")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricThreshold:
        known = {item.name for item in fields(cls)}
        _refuse_unknown_keys("MetricThreshold", data, known)
        if "metric" not in data:
            raise ValidationError(f"A MetricThreshold needs a 'metric'; got keys {sorted(data)}.")
        return cls(data["metric"], **{key: value for key, value in data.items() if key != "metric"})


@dataclass(frozen=True)
class GatePolicy:
    """What a candidate must show before promotion: thresholds overall and, optionally, on every slice.

    `slices` names columns of the evaluation rows; each distinct value of each column is a slice, checked
    with `slice_thresholds` (default: the overall thresholds). The overall check needs `min_rows` rows and
    `min_positive` positives or the gate fails; a slice smaller than `min_slice_rows` is skipped, not failed.
    """

    thresholds: Sequence[MetricThreshold]
    _: KW_ONLY
    slices: Sequence[str] = ()
    slice_thresholds: Sequence[MetricThreshold] | None = None
    min_rows: int = 200
    min_positive: int = 10
    min_slice_rows: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", _threshold_tuple("thresholds", self.thresholds))
        if not self.thresholds:
            raise ValidationError("A GatePolicy needs at least one MetricThreshold in thresholds.")
        if isinstance(self.slices, str):
            raise ValidationError(f"slices is a list of column names; got the string '{self.slices}'.")
        slices = tuple(self.slices)
        for column in slices:
            if not isinstance(column, str) or not column:
                raise ValidationError(f"Slice columns must be non-empty strings; got {column!r}.")
        if len(set(slices)) != len(slices):
            raise ValidationError(f"Slice columns repeat: {list(slices)}; name each column once.")
        object.__setattr__(self, "slices", slices)
        if self.slice_thresholds is not None:
            object.__setattr__(
                self, "slice_thresholds", _threshold_tuple("slice_thresholds", self.slice_thresholds)
            )
            if not slices:
                raise ValidationError("slice_thresholds is set but slices is empty; name the slice columns.")
            if not self.slice_thresholds:
                raise ValidationError(
                    "slice_thresholds is empty, so slices would check nothing; leave it unset to reuse "
                    "thresholds."
                )
        _count("min_rows", self.min_rows, minimum=1)
        _count("min_positive", self.min_positive, minimum=0)
        _count("min_slice_rows", self.min_slice_rows, minimum=1)

    @property
    def checks_per_slice(self) -> tuple[MetricThreshold, ...]:
        return tuple(self.thresholds if self.slice_thresholds is None else self.slice_thresholds)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric the policy reads, once, in order of appearance."""
        names = [t.metric for t in (*self.thresholds, *(self.slice_thresholds or ()))]
        return tuple(dict.fromkeys(names))

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": [t.to_dict() for t in self.thresholds],
            "slices": list(self.slices),
            "slice_thresholds": None
            if self.slice_thresholds is None
            else [t.to_dict() for t in self.slice_thresholds],
            "min_rows": self.min_rows,
            "min_positive": self.min_positive,
            "min_slice_rows": self.min_slice_rows,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GatePolicy:
        known = {"thresholds", "slices", "slice_thresholds", "min_rows", "min_positive", "min_slice_rows"}
        _refuse_unknown_keys("GatePolicy", data, known)
        if "thresholds" not in data:
            raise ValidationError(f"A GatePolicy needs 'thresholds'; got keys {sorted(data)}.")
        values = dict(data)
        values["thresholds"] = [_as_threshold(t) for t in values["thresholds"]]
        if values.get("slice_thresholds") is not None:
            values["slice_thresholds"] = [_as_threshold(t) for t in values["slice_thresholds"]]
        return cls(values.pop("thresholds"), **values)


def _finite_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _count(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _threshold_tuple(name: str, thresholds: Any) -> tuple[MetricThreshold, ...]:
    if isinstance(thresholds, MetricThreshold):
        return (thresholds,)
    items = tuple(thresholds)
    for item in items:
        if not isinstance(item, MetricThreshold):
            raise ValidationError(f"{name} must hold MetricThreshold objects; got {item!r}.")
    return items


def _as_threshold(value: Any) -> MetricThreshold:
    return value if isinstance(value, MetricThreshold) else MetricThreshold.from_dict(value)


def _refuse_unknown_keys(what: str, data: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValidationError(f"Unknown {what} keys {unknown}; known keys: {sorted(known)}.")
