"""Drift of a deployed model: its training snapshot against a window of its prediction log."""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson
import pandas as pd

from loopml.data.snapshots import get_snapshot, load_snapshot
from loopml.errors import ValidationError
from loopml.monitoring.drift import DriftReport, DriftSettings, compare
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
    reference_window: timedelta | None = None,
) -> DriftReport:
    """Compare each model input between the version's training set and predictions in [start, end).

    With `reference_window`, only the newest part of the training set is the reference: the world as it was
    when the model was trained, not as it was a month before.
    """
    if version.dataset_id is None:
        raise ValidationError(f"Model {version.ref} has no training snapshot to compare against.")
    reference = load_snapshot(metadata, offline, version.dataset_id)
    timestamp_field = get_snapshot(metadata, version.dataset_id).spec.get("timestamp_field")
    if reference_window is not None and timestamp_field in reference.columns and len(reference):
        times = pd.to_datetime(reference[timestamp_field], utc=True)
        reference = reference[times >= times.max() - reference_window]
    predictions = read_predictions(offline, endpoint, start, end)
    current = logged_inputs(predictions) if len(predictions) else pd.DataFrame(columns=version.inputs)
    for column in version.inputs:
        if column not in current.columns:
            current[column] = None
    categorical = [c for c in version.inputs if not pd.api.types.is_numeric_dtype(reference[c])]
    return compare(reference, current, version.inputs, categorical=categorical, settings=settings)
