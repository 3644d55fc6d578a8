"""Drift of a deployed model: its reference (training inputs, held-out scores) against a window of its log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import orjson
import pandas as pd

from loopml.data.profiles import SCORE, Profile, ReferenceProfile, profile_frame
from loopml.data.snapshots import get_snapshot, load_snapshot
from loopml.errors import ValidationError
from loopml.monitoring.drift import DriftReport, DriftSettings, compare, compare_profiles
from loopml.registry.models import ModelVersion
from loopml.serving.prediction_log import read_predictions
from loopml.storage.metadata import MetadataStore
from loopml.storage.offline import OfflineStore


def logged_inputs(predictions: pd.DataFrame) -> pd.DataFrame:
    """The model inputs recorded with each prediction, one column per input."""
    return pd.DataFrame.from_records([orjson.loads(text) for text in predictions["inputs"]])


def model_drift(
    metadata: MetadataStore,
    offline: OfflineStore,
    version: ModelVersion,
    endpoint: str,
    start: datetime,
    end: datetime,
    *,
    settings: DriftSettings | None = None,
    reference: ReferenceProfile | None = None,
    reference_window: timedelta | None = None,
) -> DriftReport:
    """Compare each model input (and the model's scores) between the version's reference and the predictions
    logged in [start, end).

    The reference is the profile stored when the version was registered (`reference`), so the training set is
    not read again. With `reference_window`, or for a version without a stored profile, it is the training
    snapshot instead, restricted to its newest `reference_window`: the world as it was when the model was
    trained, not as it was a month before.
    """
    predictions = read_predictions(offline, endpoint, start, end)
    current = logged_inputs(predictions) if len(predictions) else pd.DataFrame(columns=version.inputs)
    for column in version.inputs:
        if column not in current.columns:
            current[column] = None
    if reference is not None and reference_window is None:
        outputs = predictions["output"] if len(predictions) else []
        return window_drift(reference, current, outputs, version.inputs, settings)[0]
    return _against_snapshot(metadata, version, offline, current, settings, reference_window)


def window_drift(
    reference: ReferenceProfile,
    inputs: pd.DataFrame,
    outputs: Sequence[float] | pd.Series,
    columns: list[str],
    settings: DriftSettings | None,
) -> tuple[DriftReport, Profile]:
    """Drift of a window's logged inputs (and of its scores, when the reference has them) against a reference
    profile, with the window's profile (counted in the reference's bins)."""
    window = profile_frame(inputs, reference=reference.inputs, columns=columns)
    report = compare_profiles(reference.inputs, window, columns, settings=settings)
    if reference.scores is None:
        return report, window
    scores = profile_frame(pd.DataFrame({SCORE: outputs}), reference=reference.scores)
    output = compare_profiles(reference.scores, scores, [SCORE], settings=settings)
    return DriftReport(report.features, output.features[0], report.settings), window


def _against_snapshot(
    metadata: MetadataStore,
    version: ModelVersion,
    offline: OfflineStore,
    current: pd.DataFrame,
    settings: DriftSettings | None,
    reference_window: timedelta | None,
) -> DriftReport:
    if version.dataset_id is None:
        raise ValidationError(
            f"Model {version.ref} has no stored reference profile and no training snapshot to compare against."
        )
    reference = load_snapshot(metadata, offline, version.dataset_id)
    timestamp_field = get_snapshot(metadata, version.dataset_id).spec.get("timestamp_field")
    if reference_window is not None and timestamp_field in reference.columns and len(reference):
        times = pd.to_datetime(reference[timestamp_field], utc=True)
        reference = reference[times >= times.max() - reference_window]
    categorical = [c for c in version.inputs if not pd.api.types.is_numeric_dtype(reference[c])]
    return compare(reference, current, version.inputs, categorical=categorical, settings=settings)
