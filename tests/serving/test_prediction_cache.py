"""Cached serving: batch scoring fills the online store, an endpoint answers entity-only requests from it
while the entry is fresh and belongs to the version it serves, and /metrics counts hits, misses and stale."""

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from loopml.config import write_config
from loopml.project import Project
from loopml.registry.models import ModelVersion
from loopml.serving import prediction_cache
from loopml.serving.app import create_app
from loopml.serving.batch import batch_score
from loopml.serving.endpoints import configure, deploy
from tests.helpers import SPEC, build_world, go_live

# A model of stored features only: its prediction depends on the entity alone, so it can be cached.
STORED = replace(SPEC, model_name="stored", request_features=(), params={"max_iter": 20, "categorical": []})
MAX_AGE = 3600


@dataclass
class World:
    project: Project
    events: pd.DataFrame
    v1: ModelVersion


@pytest.fixture
def world(tmp_path: Path, clock, online_backend: dict[str, str]) -> Iterator[World]:
    """Endpoint 'ep' serving model 'stored'@champion with a one-hour prediction cache, on SQLite or Redis."""
    write_config(tmp_path, "test")
    project = Project(tmp_path, clock=clock, environ=online_backend)
    events = build_world(project)
    v1 = project.registry.register(project.train(STORED, events))
    project.registry.set_alias("stored", "champion", v1.version, reason="test")
    deploy(project.metadata, project.registry, "ep", "stored")
    configure(project.metadata, "ep", cache_max_age_seconds=MAX_AGE)
    go_live(project, clock)
    yield World(project, events, v1)
    project.close()


def score(project: Project, frame: pd.DataFrame, name: str, *, fill_cache: bool) -> dict[int, float]:
    source = project.path / f"{name}-in.parquet"
    frame.to_parquet(source, index=False)
    out = project.path / f"{name}.parquet"
    batch_score(project, "stored@champion", source, out, fill_cache=fill_cache)
    scored = pd.read_parquet(out)
    return dict(zip(scored.user_id, scored.prediction, strict=True))


def ask(client: TestClient, users: int | list[int]) -> dict:
    response = client.post("/v1/endpoints/ep/predict", json={"entities": {"user_id": users}})
    assert response.status_code == 200, response.text
    return response.json()


def cache_counts(client: TestClient) -> dict[str, float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    family = next(f for f in families if f.name == "loopml_prediction_cache_requests")
    return {
        s.labels["result"]: s.value
        for s in family.samples
        if s.name.endswith("_total") and s.labels["endpoint"] == "ep"
    }


def test_an_endpoint_answers_from_the_cache_while_fresh_and_for_its_version(world: World, clock) -> None:
    project = world.project
    online = project.get_online_features({"user_id": list(range(50))}, ["users:risk"]).values["risk"]
    # Batch rows carry a risk other than the online one, so a cached answer differs from a live one.
    cached_rows = pd.DataFrame({"user_id": range(40), "risk": [1 - r for r in online[:40]]})
    cached = score(project, cached_rows, "cached", fill_cache=True)
    live = score(project, pd.DataFrame({"user_id": range(50), "risk": online}), "live", fill_cache=False)
    assert cached[3] != live[3]

    with TestClient(create_app(project)) as client:
        hit = ask(client, 3)
        assert (hit["cached"], hit["output"], hit["model_version"]) == (True, cached[3], 1)
        several = ask(client, [3, 4])
        assert several["cached"] is True
        assert [p["output"] for p in several["predictions"]] == [cached[3], cached[4]]

        missing = ask(client, 45)  # not in the batch
        assert (missing["cached"], missing["output"]) == (False, live[45])
        assert ask(client, [3, 45])["cached"] is False  # one entity without an entry: all computed live

        clock.advance(timedelta(seconds=MAX_AGE + 1))
        stale = ask(client, 3)
        assert (stale["cached"], stale["output"]) == (False, live[3])
        assert cache_counts(client) == {"hit": 4.0, "miss": 2.0, "stale": 1.0}

        v2 = project.registry.register(
            project.train(replace(STORED, params={**STORED.params, "max_iter": 5}), world.events)
        )
        score(project, cached_rows, "fresh-v1", fill_cache=True)  # fresh entries, but of version 1
        project.registry.set_alias("stored", "champion", v2.version, reason="test")
        deadline = time.monotonic() + 5
        while client.get("/v1/endpoints/ep").json()["model_version"] != v2.version:
            assert time.monotonic() < deadline, "the alias move did not reach the server within 5 s"
            time.sleep(0.05)
        moved = ask(client, 3)
        assert (moved["cached"], moved["model_version"]) == (False, v2.version)

        cached_v2 = score(project, cached_rows, "cached-v2", fill_cache=True)
        assert cached_v2[3] != cached[3]
        hit_v2 = ask(client, 3)
        assert (hit_v2["cached"], hit_v2["output"], hit_v2["model_version"]) == (True, cached_v2[3], 2)
        counts = cache_counts(client)
    assert counts == {"hit": 5.0, "miss": 3.0, "stale": 1.0}
    assert counts["hit"] / sum(counts.values()) == pytest.approx(5 / 9)  # the hit ratio a dashboard shows


def test_a_request_with_more_than_the_entity_keys_is_computed_live(world: World) -> None:
    project = world.project
    score(project, pd.DataFrame({"user_id": [3], "risk": [0.5]}), "cached", fill_cache=True)
    with TestClient(create_app(project)) as client:
        response = client.post("/v1/endpoints/ep/predict", json={"records": [{"risk": 0.25}]})
        assert response.status_code == 200, response.text
        assert response.json()["cached"] is False
        assert cache_counts(client) == {}


def test_cache_entries_belong_to_one_version_and_age(world: World, clock) -> None:
    project = world.project
    now = clock.now()
    assert (
        prediction_cache.write_cached(project.online, world.v1, [(1,), ("2",)], [0.25, 0.75], scored_at=now)
        == 2
    )
    other = replace(world.v1, version=world.v1.version + 1)

    async def read_all() -> list[tuple[list, list]]:
        def read(version: ModelVersion, keys: list, age: float):
            later = now + timedelta(seconds=age)
            return prediction_cache.read_cached(project.online, version, keys, now=later, max_age_seconds=60)

        try:
            return [
                await read(world.v1, [(1,), (2,), (3,)], 0),
                await read(world.v1, [("1",)], 61),
                await read(other, [(1,)], 0),
            ]
        finally:
            await project.online.aclose()

    assert asyncio.run(read_all()) == [
        ([0.25, 0.75, None], ["hit", "hit", "miss"]),
        ([None], ["stale"]),
        ([None], ["miss"]),
    ]
