"""Routes as the server serves them: canary shares, sticky units, shadows, arms, rollback, unload, batching."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from loopml.project import Project
from loopml.serving.app import create_app
from loopml.serving.endpoints import Route, configure, deploy
from loopml.serving.prediction_log import read_predictions
from loopml.serving.router import release_memory
from loopml.serving.routing import BUCKETS, RoutedTo, RouteTable, bucket
from tests.helpers import SPEC, START, build_world, go_live, train_and_deploy


@pytest.fixture
def two_versions(project: Project, clock) -> Iterator[tuple[Project, TestClient]]:
    events = build_world(project)
    train_and_deploy(project, events)
    v2 = project.registry.register(project.train(SPEC, events.sample(frac=0.7, random_state=1)))
    project.registry.set_alias("toy", "challenger", v2.version, reason="test")
    go_live(project, clock)
    with TestClient(create_app(project)) as client:
        yield project, client


def ask(client: TestClient, unit: str | None = None, user: int = 3) -> dict:
    body = {"entities": {"user_id": user}, "inputs": {"amount": 50.0, "channel": "web"}, "unit_id": unit}
    response = client.post("/v1/endpoints/toy/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(client: TestClient, check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the route change did not reach the server"
        time.sleep(0.05)


def test_buckets_are_stable_uniform_and_salted() -> None:
    assert bucket("salt", "user-1") == bucket("salt", "user-1")
    assert bucket("salt", "user-1") != bucket("pepper", "user-1") or bucket("salt", "user-2") != bucket(
        "pepper", "user-2"
    )
    counts = Counter(bucket("s", str(i)) * 10 // BUCKETS for i in range(20_000))
    assert all(1_700 < counts[d] < 2_300 for d in range(10)), counts


def test_a_growing_canary_keeps_the_units_it_had() -> None:
    def table(weight: float) -> RouteTable[str]:
        routes = [
            RoutedTo(Route("primary", "m", "champion", None, "primary", 100.0), "v1"),
            RoutedTo(Route("canary", "m", "challenger", None, "canary", weight), "v2"),
        ]
        return RouteTable("ep", routes)

    units = [f"u{i}" for i in range(2_000)]
    at5 = {u for u in units if table(5).choose(u).served == "v2"}
    at25 = {u for u in units if table(25).choose(u).served == "v2"}
    assert at5 < at25
    assert 50 < len(at5) < 150 and 400 < len(at25) < 600


def test_canary_takes_its_share_and_a_unit_stays_on_its_version(two_versions) -> None:
    project, client = two_versions
    deploy(project.metadata, project.registry, "toy", "toy", "challenger", mode="canary", weight=30)
    wait_for(client, lambda: len(client.get("/v1/endpoints/toy").json()["routes"]) == 2)
    answers = [ask(client, unit=f"unit-{i}") for i in range(300)]
    versions = Counter(a["model_version"] for a in answers)
    assert 60 < versions[2] < 120, versions
    assert {a["route"] for a in answers if a["model_version"] == 2} == {"canary"}
    for i in range(20):
        assert {ask(client, unit=f"unit-{i}")["model_version"] for _ in range(3)} == {
            answers[i]["model_version"]
        }


def test_experiment_arms_split_traffic_by_weight(two_versions) -> None:
    project, client = two_versions
    meta, reg = project.metadata, project.registry
    deploy(meta, reg, "toy", "toy", "champion", mode="experiment", weight=50, route="a")
    deploy(meta, reg, "toy", "toy", "challenger", mode="experiment", weight=50, route="b")
    wait_for(client, lambda: len(client.get("/v1/endpoints/toy").json()["routes"]) == 3)
    routes = Counter(ask(client, unit=f"u{i}")["route"] for i in range(200))
    assert set(routes) == {"a", "b"} and 70 < routes["a"] < 130, routes


def test_a_shadow_answer_is_logged_but_never_returned(two_versions) -> None:
    project, client = two_versions
    deploy(project.metadata, project.registry, "toy", "toy", "challenger", mode="shadow", weight=100)
    wait_for(client, lambda: len(client.get("/v1/endpoints/toy").json()["routes"]) == 2)
    answers = [ask(client, unit=f"s{i}") for i in range(10)]
    assert {a["model_version"] for a in answers} == {1}
    client.post("/v1/predictions/flush").raise_for_status()
    window = (START, START + pd.Timedelta(days=30))
    served = read_predictions(project.offline, "toy", *window)
    everything = read_predictions(project.offline, "toy", *window, include_shadow=True)
    assert set(served.prediction_id) == {a["prediction_id"] for a in answers}
    shadows = everything[~everything.served]
    assert len(shadows) == 10 and set(shadows.model_version) == {2} and set(shadows.route) == {"shadow"}
    assert set(shadows.unit_id) == {f"s{i}" for i in range(10)}
    assert 'loopml_shadow_predictions_total{endpoint="toy",version="2"} 10.0' in client.get("/metrics").text


def test_a_route_change_under_load_fails_no_request_and_the_old_version_stays_loaded(two_versions) -> None:
    project, client = two_versions
    seen: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            body = {"entities": {"user_id": 3}, "inputs": {"amount": 50.0, "channel": "web"}}
            response = client.post("/v1/endpoints/toy/predict", json=body)
            if response.status_code != 200:
                failures.append(response.text)
            else:
                seen.append(response.json()["model_version"])

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.3)
        project.registry.set_alias("toy", "champion", 2, reason="promote")
        moved = time.monotonic()
        wait_for(client, lambda: bool(seen) and seen[-1] == 2)
        assert time.monotonic() - moved < 1.5  # two refresh intervals and a request
        project.registry.set_alias("toy", "champion", 1, reason="roll back")
        wait_for(client, lambda: seen[-1] == 1)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert 1 in seen and 2 in seen
    router_versions = client.app.state.router.loaded_versions
    assert ("toy", 1) in router_versions and ("toy", 2) in router_versions


def test_unload_frees_the_endpoint_and_load_brings_it_back(two_versions) -> None:
    _, client = two_versions
    router = client.app.state.router
    router.unload("toy")
    assert router.loaded_versions == []
    response = client.post("/v1/endpoints/toy/predict", json={"entities": {"user_id": 3}, "inputs": {}})
    assert response.status_code == 503 and "unloaded" in response.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200  # unloaded on purpose is not "not ready"
    router.load("toy")
    assert ask(client)["model_version"] == 1


def test_adaptive_batching_answers_the_same_numbers(two_versions) -> None:
    project, client = two_versions
    plain = [ask(client, user=u)["output"] for u in range(5)]
    configure(project.metadata, "toy", max_batch_size=8, max_batch_wait_ms=1)
    wait_for(client, lambda: client.get("/v1/endpoints/toy").json()["settings"]["max_batch_size"] == 8)
    batched = [ask(client, user=u)["output"] for u in range(5)]
    assert batched == plain
    assert 'loopml_batch_size_count{endpoint="toy"} 5.0' in client.get("/metrics").text


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_unloading_gives_the_models_memory_back(project: Project, clock) -> None:
    events = build_world(project, n_users=10, days=3, per_day=30)
    trained = project.train(SPEC, events)
    trained.estimator.ballast = np.random.default_rng(0).random(12_500_000)  # 100 MB a model holds
    version = project.registry.register(trained)
    project.registry.set_alias("toy", "champion", version.version, reason="test")
    deploy(project.metadata, project.registry, "big", "toy")
    del trained
    release_memory()
    before = resident_bytes()
    with TestClient(create_app(project)) as client:
        router = client.app.state.router
        loaded = resident_bytes()
        assert loaded - before > 90e6  # the server holds the model
        router.unload("big")
        assert router.loaded_versions == []
        assert loaded - resident_bytes() > 80e6  # and gives it back on unload
        router.load("big")
        assert resident_bytes() - before > 90e6


def test_a_growing_canary_moves_no_unit_between_experiment_arms() -> None:
    def table(canary: float) -> RouteTable[str]:
        routes = [
            RoutedTo(Route("primary", "m", "champion", None, "primary", 100.0), "v1"),
            RoutedTo(Route("canary", "m", "challenger", None, "canary", canary), "v2"),
            RoutedTo(Route("a", "m", "a", None, "experiment", 20.0), "va"),
            RoutedTo(Route("b", "m", "b", None, "experiment", 20.0), "vb"),
        ]
        return RouteTable("ep", routes)

    units = [f"u{i}" for i in range(3_000)]
    before = {u: table(5).choose(u).served for u in units}
    after = {u: table(40).choose(u).served for u in units}
    assert all(after[u] == before[u] for u in units if before[u] in ("va", "vb"))
    assert all(after[u] in ("v1", "v2") for u in units if before[u] in ("v1", "v2"))
    assert 500 < sum(v == "va" for v in after.values()) < 700


def test_every_protocol_logs_the_score_and_unknown_endpoints_share_one_series(two_versions) -> None:
    project, client = two_versions
    row = {"risk": 0.4, "amount": 50.0, "channel": "web"}
    json_answer = client.post("/v1/endpoints/toy/predict", json={"records": [row]}).json()
    mlflow = client.post("/invocations", json={"dataframe_records": [row]})
    assert mlflow.status_code == 200, mlflow.text
    client.post("/v1/predictions/flush").raise_for_status()
    logged = read_predictions(project.offline, "toy", START, START + pd.Timedelta(days=30))
    assert len(logged) == 2
    assert logged.output.tolist() == pytest.approx([json_answer["predictions"][0]["output"]] * 2)
    for name in ("nope-1", "nope-2"):
        assert client.post(f"/v1/endpoints/{name}/predict", json={"records": [row]}).status_code == 404
    text = client.get("/metrics").text
    assert 'loopml_requests_total{endpoint="unknown",status="404",version=""} 2.0' in text
    assert "nope-1" not in text


def test_a_deploy_that_cannot_load_keeps_the_server_ready(two_versions) -> None:
    project, client = two_versions
    broken = project.registry.register(project.train(SPEC, build_world(project, seed=4)))
    Path(project.artifacts.path_of(broken.artifact_digest)).write_bytes(b"corrupted")
    project.registry.set_alias("toy", "broken", broken.version, reason="test")
    deploy(project.metadata, project.registry, "other", "toy", "broken")
    wait_for(client, lambda: "other" in client.app.state.router.endpoints)
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/other/ready").status_code == 503
    assert client.get("/v1/endpoints/other").json()["state"] == "UNAVAILABLE"
    assert ask(client)["model_version"] == 1
