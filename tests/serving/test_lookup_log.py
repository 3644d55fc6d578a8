"""The feature lookup log: online reads queued by serving, written in day partitions, flushed on shutdown."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from loopml.clock import SimulatedClock
from loopml.config import write_config
from loopml.features.lookup_log import FEATURE_LOOKUPS, LOOKUP_SCHEMA, lookup_records, read_lookups
from loopml.features.registry import get_feature_view
from loopml.project import Project
from loopml.serving.app import create_app
from loopml.serving.prediction_log import BatchWriter
from tests.helpers import START, build_world

NOW = START + pd.Timedelta(days=10, hours=1)


@pytest.fixture
def slow_flushing(tmp_path: Path, clock: SimulatedClock) -> Iterator[Project]:
    """A project whose log writers only write on a full batch, a flush request or shutdown."""
    write_config(tmp_path, "test")
    project = Project(tmp_path, clock=clock, environ={"LOOPML_SERVING__LOG_FLUSH_SECONDS": "3600"})
    build_world(project)
    project.materialize(end=START + pd.Timedelta(days=10))
    clock.set(NOW)
    yield project
    project.close()


def test_online_reads_are_logged_and_flushed_on_shutdown(slow_flushing: Project) -> None:
    project = slow_flushing
    with TestClient(create_app(project)) as client:
        for body in (
            {"entities": {"user_id": [1, 999]}, "features": ["users:risk"]},
            {"entities": {"user_id": [2]}, "features": ["users:risk"], "full_feature_names": True},
        ):
            assert client.post("/v1/features/online", json=body).status_code == 200
        assert not project.offline.exists(FEATURE_LOOKUPS)  # still queued
        assert "loopml_feature_lookup_log_dropped_total 0.0" in client.get("/metrics").text

    logged = read_lookups(project.offline, NOW, NOW)
    assert list(logged.columns) == LOOKUP_SCHEMA.names
    assert logged.lookup_id.nunique() == 2 and set(logged.source) == {"feature_server"}
    assert set(logged.view) == {"users"} and set(logged.ts) == {NOW}
    by_user = {
        orjson.loads(e)["user_id"]: row for e, row in zip(logged.entities, logged.itertuples(), strict=True)
    }
    assert set(by_user) == {1, 2, 999}
    risk = project.get_online_features({"user_id": [1, 2]}, ["users:risk"]).values["risk"]
    for user, value in zip((1, 2), risk, strict=True):
        assert orjson.loads(by_user[user].values) == {"risk": value}  # full feature names are logged plain
        assert orjson.loads(by_user[user].statuses) == {"risk": "present"}
        assert orjson.loads(by_user[user].event_timestamps) == {
            "risk": (START + pd.Timedelta(days=10)).timestamp()
        }
    assert orjson.loads(by_user[999].values) == {"risk": None}
    assert orjson.loads(by_user[999].statuses) == {"risk": "missing"}
    assert orjson.loads(by_user[999].event_timestamps) == {"risk": None}


def test_a_lookup_json_cannot_hold_is_skipped_and_the_read_still_answers(slow_flushing: Project) -> None:
    project = slow_flushing
    with TestClient(create_app(project)) as client:
        huge = {"entities": {"user_id": [2**70]}, "features": ["users:risk"]}
        answer = client.post("/v1/features/online", json=huge)
        assert answer.status_code == 200, answer.text
        assert answer.json()["features"]["risk"]["statuses"] == ["missing"]
        client.post("/v1/features/online", json={"entities": {"user_id": [1]}, "features": ["users:risk"]})
    assert [orjson.loads(e) for e in read_lookups(project.offline, NOW, NOW).entities] == [{"user_id": 1}]


def test_a_window_reads_only_its_day_partitions(project: Project) -> None:
    build_world(project)
    requests = [(get_feature_view(project.metadata, "users"), ["risk"])]
    writer = BatchWriter(project.offline, FEATURE_LOOKUPS, LOOKUP_SCHEMA, flush_seconds=3600)
    days = [START + timedelta(days=d, hours=12) for d in range(3)]
    for index, moment in enumerate(days):
        found = project.get_online_features({"user_id": [index]}, ["users:risk"])
        for record in lookup_records(f"l{index}", "feature_server", moment, requests, found):
            writer.put(record)
    writer.close()
    partitions = sorted(p.name for p in project.offline.dataset_dir(FEATURE_LOOKUPS).iterdir())
    assert partitions == ["date=2026-01-01", "date=2026-01-02", "date=2026-01-03"]
    first_day = project.offline.dataset_dir(FEATURE_LOOKUPS) / "date=2026-01-01"
    (first_day / "part-broken.parquet").write_bytes(b"not parquet")  # read only if the window touches it

    window = read_lookups(project.offline, days[1], days[2])
    assert window.lookup_id.tolist() == ["l1", "l2"]
    assert read_lookups(project.offline, days[1], days[2] - timedelta(seconds=1)).lookup_id.tolist() == ["l1"]
    with pytest.raises(Exception, match="part-broken"):
        read_lookups(project.offline, days[0], days[2])
