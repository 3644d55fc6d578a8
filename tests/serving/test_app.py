import time
from collections.abc import Iterator
from datetime import timedelta

import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from loopml.features.lookup_log import read_lookups
from loopml.project import Project
from loopml.serving.app import create_app
from loopml.serving.prediction_log import read_labelled_predictions, read_predictions
from tests.helpers import SPEC, START, build_world, go_live, train_and_deploy


@pytest.fixture
def served(project: Project, clock) -> Iterator[tuple[Project, TestClient]]:
    events = build_world(project)
    train_and_deploy(project, events)
    go_live(project, clock)
    with TestClient(create_app(project)) as client:
        yield project, client


def predict(client: TestClient, user: int = 3, **inputs) -> dict:
    body = {
        "entities": {"user_id": user},
        "inputs": {"amount": 50.0, "channel": "web", **inputs},
        "unit_id": "u1",
    }
    response = client.post("/v1/endpoints/toy/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_predict_fetches_online_features_and_names_the_version(served) -> None:
    _, client = served
    answer = predict(client)
    assert answer["model"] == "toy" and answer["model_version"] == 1
    assert 0.0 <= answer["output"] <= 1.0
    assert answer["feature_statuses"] == {"risk": "present"}
    assert len(answer["prediction_id"]) == 32
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_predictions_and_feedback_are_logged_and_joinable(served, clock) -> None:
    project, client = served
    ids = []
    for user in range(5):
        clock.advance(timedelta(seconds=1))
        ids.append(predict(client, user=user)["prediction_id"])
    assert client.post("/v1/feedback", json={"prediction_id": ids[0], "label": 1}).json() == {"accepted": 1}
    clock.advance(timedelta(minutes=5))
    client.post(
        "/v1/feedback", json=[{"prediction_id": ids[0], "label": 0}, {"prediction_id": ids[1], "label": 1}]
    )
    client.post("/v1/predictions/flush").raise_for_status()

    window = (START, START + pd.Timedelta(days=11))
    logged = read_predictions(project.offline, "toy", *window)
    assert logged.prediction_id.tolist() == ids
    assert set(logged.model_version) == {1}
    assert '"risk"' in logged.inputs[0] and '"amount":50.0' in logged.inputs[0]
    labelled = read_labelled_predictions(project.offline, "toy", *window, labels_until=clock.now())
    assert dict(zip(labelled.prediction_id, labelled.label, strict=True)) == {
        ids[0]: 0.0,
        ids[1]: 1.0,
    }  # latest wins
    earlier = read_labelled_predictions(
        project.offline, "toy", *window, labels_until=clock.now() - timedelta(minutes=1)
    )
    assert dict(zip(earlier.prediction_id, earlier.label, strict=True)) == {ids[0]: 1.0}


def test_the_feature_reads_of_predictions_are_logged_under_the_prediction_id(served) -> None:
    project, client = served
    known, unknown = predict(client, user=3), predict(client, user=999)
    client.post("/v1/predictions/flush").raise_for_status()
    logged = read_lookups(project.offline, START, START + pd.Timedelta(days=11))
    assert logged.lookup_id.tolist() == sorted([known["prediction_id"], unknown["prediction_id"]])
    assert set(logged.source) == {"endpoint:toy"} and set(logged.view) == {"users"}
    rows = logged.set_index("lookup_id")
    assert orjson.loads(rows.entities[known["prediction_id"]]) == {"user_id": 3}
    assert orjson.loads(rows.statuses[known["prediction_id"]]) == {"risk": "present"}
    assert orjson.loads(rows.statuses[unknown["prediction_id"]]) == {"risk": "missing"}
    served_risk = project.get_online_features({"user_id": [3]}, ["users:risk"]).values["risk"][0]
    assert orjson.loads(rows["values"][known["prediction_id"]]) == {"risk": served_risk}


def test_missing_feature_values_are_reported_not_fatal(served) -> None:
    _, client = served
    answer = predict(client, user=999)
    assert answer["feature_statuses"] == {"risk": "missing"}


def test_an_entity_key_past_64_bits_is_answered_and_logged(served) -> None:
    project, client = served
    answer = predict(client, user=2**70)
    assert answer["feature_statuses"] == {"risk": "missing"}
    client.post("/v1/predictions/flush")
    logged = read_predictions(project.offline, "toy", START, START + pd.Timedelta(days=365))
    assert str(2**70) in logged.entities.tolist()[-1]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/endpoints/nope/predict", {"entities": {"user_id": 1}}, 404, "No endpoint named 'nope'"),
        (
            "/v1/endpoints/toy/predict",
            {"entities": {"user_id": 1}, "inputs": {"amount": 1}},
            400,
            "'channel'",
        ),
        ("/v1/endpoints/toy/predict", {"inputs": {}}, 400, "entities"),
        (
            "/v1/endpoints/toy/predict",
            {"entities": {"user_id": 1}, "inputs": {"amount": "lots", "channel": "web"}},
            400,
            "Input 'amount' must be a number (double) but row 0 has 'lots'",
        ),
        ("/v1/feedback", {"prediction_id": "x"}, 400, "label"),
    ],
)
def test_bad_requests_get_json_errors(served, path, body, status, message) -> None:
    _, client = served
    response = client.post(path, json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_alias_move_reaches_the_server_without_restart(served) -> None:
    project, client = served
    trained = project.train(SPEC, build_world(project, seed=1))
    v2 = project.registry.register(trained)
    project.registry.set_alias("toy", "champion", v2.version, reason="test")
    deadline = time.monotonic() + 5
    while client.get("/v1/endpoints/toy").json()["model_version"] != 2:
        assert time.monotonic() < deadline, "route change did not arrive within 5 s"
        time.sleep(0.05)
    assert predict(client)["model_version"] == 2


def test_metrics_are_exposed_in_prometheus_format(served) -> None:
    _, client = served
    predict(client)
    text = client.get("/metrics").text
    assert 'loopml_requests_total{endpoint="toy",status="200",version="1"} 1.0' in text
    assert 'loopml_request_duration_seconds_count{endpoint="toy",version="1"} 1.0' in text


def test_a_version_that_fails_to_load_leaves_the_current_one_serving(served) -> None:
    from pathlib import Path

    project, client = served
    broken = project.registry.register(project.train(SPEC, build_world(project, seed=2)))
    Path(project.artifacts.path_of(broken.artifact_digest)).write_bytes(b"corrupted")
    project.registry.set_alias("toy", "champion", broken.version, reason="test")
    time.sleep(1.2)  # more than two refresh intervals
    assert predict(client)["model_version"] == 1
    assert client.get("/v2/health/ready").status_code == 200

    good = project.registry.register(project.train(SPEC, build_world(project, seed=3)))
    project.registry.set_alias("toy", "champion", good.version, reason="test")
    deadline = time.monotonic() + 5
    while predict(client)["model_version"] != good.version:
        assert time.monotonic() < deadline, "the refresher stopped after the failed load"
        time.sleep(0.05)


def test_a_model_of_request_inputs_only_needs_no_entities(project: Project) -> None:
    from dataclasses import replace

    spec = replace(SPEC, model_name="plain", features=())
    version = project.registry.register(project.train(spec, build_world(project)))
    project.registry.set_alias("plain", "champion", version.version, reason="test")
    from loopml.serving.endpoints import deploy

    deploy(project.metadata, project.registry, "plain", "plain")
    with TestClient(create_app(project)) as client:
        response = client.post(
            "/v1/endpoints/plain/predict", json={"entities": {}, "inputs": {"amount": 3.0, "channel": "app"}}
        )
    assert response.status_code == 200, response.text
    assert response.json()["feature_statuses"] == {}
