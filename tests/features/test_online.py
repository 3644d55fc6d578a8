import time
from datetime import timedelta

import pytest

from loopml.errors import ValidationError
from loopml.features.online import EXPIRED, MISSING, PRESENT
from loopml.features.registry import plan
from loopml.project import Project
from tests.features.conftest import ts


@pytest.fixture
def project(online_project: Project) -> Project:
    """Every test here runs against the SQLite and the Redis online store."""
    return online_project


def test_materialize_then_read_online_values(project: Project, clock, user_view) -> None:
    written = project.materialize(end=ts("2026-01-02 12:00"))
    assert written == {"user_scores": 2}  # the window is [end - ttl, end]: both users have a value in it
    clock.set(ts("2026-01-02 13:00"))
    online = project.get_online_features({"user_id": [1, 2, 3]}, ["user_scores:score", "user_scores:label"])
    assert online.values["score"] == [2.5, None, None]
    assert online.values["label"] == ["c", None, None]
    assert online.statuses["score"] == [PRESENT, EXPIRED, MISSING]
    assert online.event_timestamps["score"][0] == ts("2026-01-02").timestamp()
    assert online.to_df().user_id.tolist() == [1, 2, 3]


def test_values_past_their_ttl_read_as_expired(project: Project, clock, user_view) -> None:
    project.materialize(end=ts("2026-01-02 12:00"), start=ts("2026-01-01"))
    clock.set(ts("2026-01-02 12:00"))
    fresh = project.get_online_features({"user_id": [1, 2]}, ["user_scores:score"])
    assert fresh.values["score"] == [2.5, 10.0]
    clock.set(ts("2026-01-02 12:00") + timedelta(seconds=1))
    later = project.get_online_features({"user_id": [1, 2]}, ["user_scores:score"])
    assert later.values["score"] == [2.5, None]
    assert later.statuses["score"] == [PRESENT, EXPIRED]


def test_materialize_never_moves_a_value_back_in_time(project: Project, clock, user_view) -> None:
    project.materialize(end=ts("2026-01-03 00:00"))
    project.materialize(end=ts("2026-01-01 12:00"), start=ts("2026-01-01"))  # replay of an older window
    clock.set(ts("2026-01-03 01:00"))
    assert project.get_online_features({"user_id": [1]}, ["user_scores:score"]).values["score"] == [3.0]


def test_online_read_validates_entities(project: Project, user_view) -> None:
    with pytest.raises(ValidationError, match="lack join key"):
        project.get_online_features({"merchant_id": [1]}, ["user_scores:score"])
    with pytest.raises(ValidationError, match="equal lengths"):
        project.get_online_features({"user_id": [1], "other": [1, 2]}, ["user_scores:score"])


def test_apply_versions_changed_definitions(project: Project, user_view) -> None:
    from dataclasses import replace

    assert [c.action for c in project.apply([user_view])] == ["unchanged"]
    changed = replace(user_view, ttl=timedelta(days=3))
    assert [(c.action, c.version) for c in plan(project.metadata, [changed])] == [("update", 2)]
    assert [(c.action, c.version) for c in project.apply([changed])] == [("update", 2)]
    assert [e.kind for e in project.metadata.events(subject_prefix="feature_view:")] == [
        "feature_view.created",
        "feature_view.updated",
    ]


def test_cached_definitions_follow_applies_here_at_once_and_elsewhere_within_the_poll(
    project: Project, clock, user_view, online_backend, monkeypatch
) -> None:
    from dataclasses import replace

    import loopml.project

    project.materialize(end=ts("2026-01-02 12:00"))
    clock.set(ts("2026-01-02 13:00"))
    refs = ["user_scores:score"]
    assert project.get_online_features({"user_id": [1]}, refs).statuses["score"] == [PRESENT]
    project.apply([replace(user_view, ttl=timedelta(minutes=30))])  # through this project: seen at once
    assert project.get_online_features({"user_id": [1]}, refs).statuses["score"] == [EXPIRED]

    monkeypatch.setattr(loopml.project, "DEFINITIONS_POLL_SECONDS", 0.2)
    other = Project(project.path, clock=clock, environ=online_backend)
    try:
        other.apply([user_view])  # another process restores the day-long ttl
    finally:
        other.close()
    time.sleep(0.3)
    assert project.get_online_features({"user_id": [1]}, refs).statuses["score"] == [PRESENT]
