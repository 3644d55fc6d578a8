"""The training pipeline: point-in-time training set → snapshot → fit → validate → tracked run.

Registration is the registry's job (it sits to the right of training); `train` returns everything the
registry needs to record the version and its lineage.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from loopml.data.profiles import SCORE, ReferenceProfile, profile_frame
from loopml.data.snapshots import Snapshot, save_snapshot
from loopml.errors import ValidationError
from loopml.features.definitions import parse_feature_ref
from loopml.storage.metadata import MetadataStore
from loopml.storage.offline import OfflineStore
from loopml.training.evaluation import classification_metrics, predict_scores
from loopml.training.tracking import Tracker, code_version

INPUT_EXAMPLE_ROWS = 5  # rows of training inputs kept in the model file as its input example
FeatureFetcher = Callable[[pd.DataFrame, Sequence[str]], pd.DataFrame]


@dataclass(frozen=True)
class TrainingSpec:
    """How a model is trained: its inputs, label and estimator; stored with the model for retraining."""

    model_name: str
    features: tuple[str, ...]
    request_features: tuple[str, ...]
    label: str
    estimator: str
    params: dict[str, Any] = field(default_factory=dict)
    timestamp_field: str = "event_timestamp"
    validation_fraction: float = 0.2
    recency_half_life_days: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "request_features", tuple(self.request_features))
        for ref in self.features:
            parse_feature_ref(ref)
        if ":" not in self.estimator:
            raise ValidationError(
                f"estimator {self.estimator!r} must be 'module:function' returning an unfitted estimator."
            )
        if self.recency_half_life_days is not None and self.recency_half_life_days <= 0:
            raise ValidationError(
                f"recency_half_life_days must be positive (or None for equal weights), got {self.recency_half_life_days}."
            )
        if not 0 < self.validation_fraction < 1:
            raise ValidationError(
                f"validation_fraction must be between 0 and 1, got {self.validation_fraction}."
            )

    @property
    def inputs(self) -> list[str]:
        """Model input columns in order: request-time values, then fetched features."""
        return [*self.request_features, *(parse_feature_ref(ref)[1] for ref in self.features)]

    def spec(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "features": list(self.features),
            "request_features": list(self.request_features),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TrainingSpec:
        return cls(**spec)


@dataclass(frozen=True)
class TrainedModel:
    """A fitted estimator with the run, data snapshot and validation metrics that produced it."""

    spec: TrainingSpec
    estimator: Any
    run_id: str
    snapshot: Snapshot
    metrics: dict[str, float]
    code_version: dict[str, Any]
    input_example: pd.DataFrame
    baseline: dict[str, Any]
    reference: ReferenceProfile


def build_estimator(spec: TrainingSpec) -> Any:
    module_name, _, attribute = spec.estimator.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValidationError(f"Cannot import estimator factory {spec.estimator!r}: {exc}") from exc
    return factory(**spec.params)


def time_split(
    frame: pd.DataFrame, timestamp_field: str, fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Oldest rows for fitting, newest `fraction` for validation: a model is judged on its future."""
    ordered = frame.sort_values(timestamp_field, kind="stable")
    cut = int(len(ordered) * (1 - fraction))
    return ordered.iloc[:cut], ordered.iloc[cut:]


def train(
    spec: TrainingSpec,
    entity_df: pd.DataFrame,
    *,
    metadata: MetadataStore,
    offline: OfflineStore,
    get_features: FeatureFetcher,
    code_dir: Path,
    view_versions: dict[str, int] | None = None,
) -> TrainedModel:
    """Run the pipeline once and record it as a run; a failure marks the run failed and re-raises.

    `view_versions` (feature view name → applied version) is kept with the training-set snapshot.
    """
    needed = [spec.timestamp_field, spec.label, *spec.request_features]
    missing = [c for c in needed if c not in entity_df.columns]
    if missing:
        raise ValidationError(
            f"Training entity frame lacks column(s) {missing} required by '{spec.model_name}'."
        )
    if len(entity_df) < 10:
        raise ValidationError(
            f"Training '{spec.model_name}' needs at least 10 labelled rows, got {len(entity_df)}."
        )

    tracker = Tracker(metadata)
    code = code_version(code_dir)
    run_id = tracker.start_run(spec.model_name, {"estimator": spec.estimator, **spec.params}, code)
    try:
        training_set = get_features(entity_df, list(spec.features)) if spec.features else entity_df.copy()
        snapshot = save_snapshot(
            metadata,
            offline,
            f"{spec.model_name}-training",
            training_set,
            timestamp_field=spec.timestamp_field,
            spec={
                "features": list(spec.features),
                "label": spec.label,
                "timestamp_field": spec.timestamp_field,
                "feature_view_versions": view_versions or {},
            },
        )
        tracker.set_dataset(run_id, snapshot.id)
        _check_binary_label(training_set, spec.label)
        fit_rows, validation_rows = time_split(training_set, spec.timestamp_field, spec.validation_fraction)
        estimator = build_estimator(spec)
        estimator.fit(
            fit_rows[spec.inputs],
            fit_rows[spec.label].astype(int),
            **_recency_weights(estimator, spec, fit_rows),
        )
        validation_scores = predict_scores(estimator, validation_rows[spec.inputs])
        metrics = classification_metrics(validation_rows[spec.label].to_numpy(), validation_scores)
        tracker.log_metrics(run_id, {f"validation_{k}": v for k, v in metrics.items() if pd.notna(v)})
    except Exception as exc:
        tracker.end_run(run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    tracker.end_run(run_id)
    baseline = {
        "dataset_id": snapshot.id,
        "metrics": {k: v for k, v in metrics.items() if pd.notna(v)},
        "inputs": input_profile(fit_rows[spec.inputs]),
    }
    example = fit_rows[spec.inputs].head(INPUT_EXAMPLE_ROWS).reset_index(drop=True)
    reference = ReferenceProfile(
        profile_frame(training_set[spec.inputs]),
        profile_frame(pd.DataFrame({SCORE: validation_scores})) if len(validation_scores) else None,
    )
    return TrainedModel(spec, estimator, run_id, snapshot, metrics, code, example, baseline, reference)


def input_profile(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per-input summary of the training rows: the baseline monitoring compares live inputs with."""
    profile: dict[str, dict[str, Any]] = {}
    for column in frame.columns:
        values = frame[column]
        summary: dict[str, Any] = {"missing_share": float(values.isna().mean())}
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            described = values.astype(float).describe(percentiles=[0.05, 0.5, 0.95])
            summary.update(
                {k: float(described[k]) for k in ("mean", "std", "min", "5%", "50%", "95%", "max")}
            )
        else:
            shares = values.astype(str).value_counts(normalize=True).head(10)
            summary["top_values"] = {str(k): float(v) for k, v in shares.items()}
        profile[column] = {
            k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in summary.items()
        }
    return profile


def _check_binary_label(frame: pd.DataFrame, label: str) -> None:
    """The pipeline trains binary classifiers: labels must be 0 or 1, none missing."""
    values = frame[label]
    if values.isna().any():
        raise ValidationError(
            f"Label column '{label}' has {int(values.isna().sum())} missing values; drop or fill them."
        )
    unexpected = sorted(set(values.unique()) - {0, 1})
    if unexpected:
        raise ValidationError(
            f"Label column '{label}' must hold 0/1 for a binary classifier; found {unexpected[:5]}."
        )


def _recency_weights(estimator: Any, spec: TrainingSpec, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Sample weights halving every `recency_half_life_days` back from the newest row, as fit() keywords.

    After the world changes, the newest rows say most about it; without a half-life every row counts alike.
    """
    if spec.recency_half_life_days is None:
        return {}
    times = pd.to_datetime(rows[spec.timestamp_field], utc=True)
    age_days = ((times.max() - times) / pd.Timedelta(days=1)).to_numpy()
    weights = 0.5 ** (age_days / spec.recency_half_life_days)
    name = (
        "sample_weight" if not isinstance(estimator, Pipeline) else f"{estimator.steps[-1][0]}__sample_weight"
    )
    return {name: weights}
