"""Monitoring a deployed version against the reference profile stored when it was registered."""

from __future__ import annotations

import pandas as pd

from loopml.data.snapshots import get_snapshot
from loopml.monitoring.drift import CRITICAL, OK
from loopml.monitoring.model_drift import model_drift
from loopml.project import Project
from tests.helpers import START, build_world, serve_events, train_and_deploy


def test_a_version_is_monitored_from_its_stored_profile_without_its_training_set(
    project: Project, clock
) -> None:
    events = build_world(project, days=12)
    training = events[events.event_timestamp < START + pd.Timedelta(days=9)]
    version = train_and_deploy(project, training)
    reference = project.registry.reference_profile(version)
    assert reference is not None and set(reference.inputs.columns) == set(version.inputs)
    assert reference.inputs.rows == len(training)
    assert reference.scores is not None and reference.scores["score"].count > 0

    # The training set is gone: monitoring must not need it.
    project.offline.dataset_dir(get_snapshot(project.metadata, version.dataset_id).path).unlink()
    project.materialize(end=START + pd.Timedelta(days=11), start=START)
    day = events[
        (events.event_timestamp >= START + pd.Timedelta(days=9))
        & (events.event_timestamp < START + pd.Timedelta(days=10))
    ]
    serve_events(project, clock, day, amount_factor=1.0)
    calm = model_drift(
        project.metadata,
        project.offline,
        version,
        "toy",
        START + pd.Timedelta(days=9),
        START + pd.Timedelta(days=10),
        reference=reference,
    )
    assert calm.drifted_features == [] and calm.prediction is not None

    later = events[
        (events.event_timestamp >= START + pd.Timedelta(days=10))
        & (events.event_timestamp < START + pd.Timedelta(days=11))
    ]
    serve_events(project, clock, later, amount_factor=5.0)
    shifted = model_drift(
        project.metadata,
        project.offline,
        version,
        "toy",
        START + pd.Timedelta(days=10),
        START + pd.Timedelta(days=11),
        reference=reference,
    )
    severities = {f.feature: f.severity for f in shifted.features}
    assert severities["amount"] == CRITICAL and severities["channel"] == OK
    assert shifted.prediction is not None and shifted.prediction.feature == "score"
    assert shifted.prediction.severity == CRITICAL  # five times the amount moves the scores
