"""The shadow process: idle priority, only shadow versions loaded, restarts, a bounded queue, parent exit."""

from __future__ import annotations

import os
import queue
import signal
import time
from collections.abc import Iterator

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from loopml.project import Project
from loopml.serving.app import create_app
from loopml.serving.endpoints import SHADOW, deploy
from loopml.serving.prediction_log import read_predictions
from loopml.serving.router import Router
from loopml.serving.shadow_process import Mirrored, ShadowProcess, _next
from tests.helpers import SPEC, START, build_world, go_live, train_and_deploy


@pytest.fixture
def shadowed(project: Project, clock) -> Iterator[tuple[Project, TestClient]]:
    """Endpoint toy: version 1 primary, version 2 a shadow mirroring all traffic."""
    events = build_world(project)
    train_and_deploy(project, events)
    v2 = project.registry.register(project.train(SPEC, events.sample(frac=0.7, random_state=1)))
    deploy(project.metadata, project.registry, "toy", "toy", version=v2.version, mode="shadow", weight=100)
    go_live(project, clock)
    with TestClient(create_app(project)) as client:
        yield project, client


def ask(client: TestClient, unit: str) -> dict:
    body = {"entities": {"user_id": 3}, "inputs": {"amount": 50.0, "channel": "web"}, "unit_id": unit}
    response = client.post("/v1/endpoints/toy/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def shadow_units(project: Project) -> set[str]:
    logged = read_predictions(
        project.offline, "toy", START, START + pd.Timedelta(days=30), include_shadow=True
    )
    return set(logged[~logged.served].unit_id)


def test_shadows_are_scored_by_a_child_at_idle_priority(shadowed) -> None:
    project, client = shadowed
    shadows: ShadowProcess = client.app.state.shadows
    assert shadows.running  # started at start-up: an endpoint has a shadow route
    answers = [ask(client, f"u{i}") for i in range(5)]
    assert {a["model_version"] for a in answers} == {1}
    client.post("/v1/predictions/flush").raise_for_status()
    assert shadow_units(project) == {f"u{i}" for i in range(5)}
    pid = shadows.pid
    assert pid != os.getpid()
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE


def test_each_shadow_prediction_names_the_served_prediction_it_mirrors(shadowed) -> None:
    project, client = shadowed
    answers = {ask(client, f"p{i}")["prediction_id"]: f"p{i}" for i in range(4)}
    client.post("/v1/predictions/flush").raise_for_status()
    logged = read_predictions(
        project.offline, "toy", START, START + pd.Timedelta(days=30), include_shadow=True
    )
    shadows = logged[~logged.served]
    assert set(shadows.mirrors) == set(answers)
    assert {answers[m]: unit for m, unit in zip(shadows.mirrors, shadows.unit_id, strict=True)} == {
        unit: unit for unit in answers.values()
    }
    assert logged[logged.served].mirrors.isna().all()


def test_a_killed_shadow_process_is_started_again(shadowed) -> None:
    project, client = shadowed
    shadows: ShadowProcess = client.app.state.shadows
    first = shadows.pid
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not (shadows.running and shadows.pid != first):
        assert time.monotonic() < deadline, "the shadow process was not started again"
        time.sleep(0.05)
    ask(client, "after")
    client.post("/v1/predictions/flush").raise_for_status()
    assert "after" in shadow_units(project)


def test_the_shadow_router_loads_only_shadow_versions(shadowed) -> None:
    project, client = shadowed
    router = Router(project.metadata, project.registry, project.path, modes=frozenset({SHADOW}))
    router.refresh(force=True)
    assert router.loaded_versions == [("toy", 2)]
    assert client.app.state.router.loaded_versions == [("toy", 1), ("toy", 2)]


def test_a_full_queue_refuses_more_requests(project: Project) -> None:
    shadows = ShadowProcess(project.path, max_queue=2)
    request = Mirrored("toy", "shadow", "toy", 2, {"amount": [1.0]}, 1, None, START)
    try:
        assert [shadows.submit(request) for _ in range(3)] == [True, True, False]
    finally:
        shadows.close()  # starts the child for what is queued: an unknown endpoint is skipped, not raised
    assert not shadows.running


def test_the_child_stops_when_its_parent_is_gone() -> None:
    inbox: queue.Queue[object] = queue.Queue()
    assert _next(inbox, parent=os.getppid()) is not None  # idle: the parent is alive
    assert _next(inbox, parent=os.getppid() + 1) is None
    inbox.put("message")
    assert _next(inbox, parent=os.getppid() + 1) == "message"
