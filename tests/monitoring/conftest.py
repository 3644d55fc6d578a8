"""Fixtures of the monitoring tests: an endpoint served for three days, the last one shifted."""

from __future__ import annotations

import pandas as pd
import pytest

from loopml.project import Project
from loopml.serving.prediction_log import LABEL_SCHEMA, LABELS, append_by_day, record_table
from tests.helpers import START, build_world, events_between, serve_events, train_and_deploy


@pytest.fixture
def served(project: Project, clock):
    """Days 9 and 10 served as trained, day 11 with five times the amounts; day 9 fully labelled."""
    events = build_world(project, days=12)
    version = train_and_deploy(project, events_between(events, 0, 9))
    project.materialize(end=START + pd.Timedelta(days=12), start=START)
    calm = events_between(events, 9, 10)
    ids = serve_events(project, clock, calm)
    serve_events(project, clock, events_between(events, 10, 11))
    serve_events(project, clock, events_between(events, 11, 12), amount_factor=5.0)
    labels = [
        {"prediction_id": i, "label": float(bad), "ts": START + pd.Timedelta(days=13)}
        for i, bad in zip(ids, calm.is_bad, strict=True)
    ]
    append_by_day(project.offline, LABELS, record_table(labels, LABEL_SCHEMA))
    clock.set(START + pd.Timedelta(days=14))
    return project, version
