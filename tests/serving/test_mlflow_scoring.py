"""MLflow's scoring format on loopml's server: every request format, CSV, endpoint choice and MLflow's errors."""

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from loopml.clock import SimulatedClock
from loopml.config import write_config
from loopml.project import Project
from loopml.serving.app import create_app
from loopml.serving.endpoints import configure, deploy
from loopml.serving.prediction_log import read_predictions
from tests.helpers import START, build_world, go_live, train_and_deploy

ROWS = [
    {"risk": 0.95, "amount": 400.0, "channel": "web"},
    {"risk": 0.02, "amount": 3.5, "channel": "app"},
    {"risk": 0.60, "amount": 45.0, "channel": "app"},
]


def _project(project: Project, clock, *, endpoints: tuple[str, ...] = ("toy",), **settings) -> Project:
    events = build_world(project)
    train_and_deploy(project, events)
    for name in endpoints[1:]:
        deploy(project.metadata, project.registry, name, "toy")
    if settings:
        configure(project.metadata, "toy", **settings)
    go_live(project, clock)
    return project


@pytest.fixture
def served(project: Project, clock) -> Iterator[tuple[Project, TestClient]]:
    with TestClient(create_app(_project(project, clock))) as client:
        yield project, client


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, TestClient]]:
    """One server for the tests that only read (formats and refusals), so the model trains once."""
    path = tmp_path_factory.mktemp("mlflow")
    write_config(path, "mlflow")
    clock = SimulatedClock(START.to_pydatetime())
    project = Project(path, clock=clock)
    with TestClient(create_app(_project(project, clock))) as client:
        yield project, client
    project.close()


def model_of(project: Project):
    return project.registry.load(project.registry.get_version("toy", 1))


def frame_of(client: TestClient, rows: list[dict]) -> pd.DataFrame:
    order = client.get("/v1/endpoints/toy").json()["inputs"]
    return pd.DataFrame(rows)[order]


def formats(order: list[str]) -> dict[str, dict]:
    """The same rows in every JSON form MLflow's scoring server reads."""
    return {
        "dataframe_split": {
            "dataframe_split": {
                "columns": order,
                "data": [[row[c] for c in order] for row in ROWS],
                "index": [10, 11, 12],
            }
        },
        "dataframe_records": {"dataframe_records": ROWS},
        "instances_records": {"instances": ROWS},
        "instances_lists": {"instances": [[row[c] for c in order] for row in ROWS]},
        "inputs_columns": {"inputs": {c: [row[c] for row in ROWS] for c in order}},
        "inputs_records": {"inputs": ROWS},
        "inputs_lists": {"inputs": [[row[c] for c in order] for row in ROWS]},
    }


@pytest.mark.parametrize("form", list(formats(["risk", "amount", "channel"])))
def test_each_json_format_answers_model_predict(shared, form) -> None:
    project, client = shared
    expected = model_of(project).predict(frame_of(client, ROWS)).tolist()
    assert len(set(expected)) == 2, "the rows should cover both classes"
    body = formats(client.get("/v1/endpoints/toy").json()["inputs"])[form]
    response = client.post("/invocations", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": expected}
    assert response.headers["x-loopml-model-version"] == "1"
    assert response.headers["x-loopml-endpoint"] == "toy"


def test_a_single_row_of_scalars_in_inputs(shared) -> None:
    project, client = shared
    response = client.post("/invocations", json={"inputs": ROWS[0]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == model_of(project).predict(frame_of(client, ROWS[:1])).tolist()


def test_csv_bodies_are_read_as_a_table(shared) -> None:
    project, client = shared
    csv = frame_of(client, ROWS).to_csv(index=False)
    response = client.post("/invocations", content=csv, headers={"content-type": "text/csv; charset=utf-8"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == model_of(project).predict(frame_of(client, ROWS)).tolist()


def test_entity_keys_fetch_the_stored_features(shared) -> None:
    project, client = shared
    rows = [
        {"user_id": 3, "amount": 120.0, "channel": "web"},
        {"user_id": 7, "amount": 2.0, "channel": "app"},
    ]
    response = client.post("/invocations", json={"dataframe_records": rows})
    assert response.status_code == 200, response.text
    risk = project.get_online_features({"user_id": [3, 7]}, ["users:risk"]).values["risk"]
    full = [{**row, "risk": r} for row, r in zip(rows, risk, strict=True)]
    assert response.json()["predictions"] == model_of(project).predict(frame_of(client, full)).tolist()


def test_predict_proba_and_prediction_ids_on_request(served) -> None:
    project, client = served
    response = client.post(
        "/v1/endpoints/toy/invocations",
        json={
            "dataframe_records": ROWS,
            "params": {"predict_method": "predict_proba", "return_prediction_ids": True},
        },
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    np.testing.assert_allclose(answer["predictions"], model_of(project).predict_proba(frame_of(client, ROWS)))
    client.post("/v1/predictions/flush").raise_for_status()
    logged = read_predictions(project.offline, "toy", START, START + pd.Timedelta(days=11))
    assert sorted(logged.prediction_id) == sorted(answer["prediction_ids"])
    assert len(set(answer["prediction_ids"])) == len(ROWS)


def test_health_ping_and_version(shared) -> None:
    _, client = shared
    assert client.get("/ping").status_code == 200
    assert client.get("/health").status_code == 200
    version = client.get("/version")
    assert version.status_code == 200 and version.text == "0.1.0"


def test_nan_from_mlflow_clients_follows_the_nan_policy(project: Project, clock) -> None:
    body = '{"dataframe_split": {"columns": ["risk", "amount", "channel"], "data": [[0.5, NaN, "web"]]}}'
    headers = {"content-type": "application/json"}
    with TestClient(create_app(_project(project, clock))) as client:
        refused = client.post("/invocations", content=body, headers=headers)
    assert refused.status_code == 400
    assert "'amount' is null or NaN in row 0" in refused.json()["message"]
    configure(project.metadata, "toy", nan_policy="allow")
    with TestClient(create_app(project)) as client:
        allowed = client.post("/invocations", content=body, headers=headers)
    assert allowed.status_code == 200, allowed.text
    frame = pd.DataFrame({"risk": [0.5], "amount": [np.nan], "channel": ["web"]})
    assert (
        allowed.json()["predictions"]
        == model_of(project).predict(frame[["risk", "amount", "channel"]]).tolist()
    )


def test_with_several_endpoints_the_request_names_one(project: Project, clock) -> None:
    _project(project, clock, endpoints=("toy", "other"))
    body = {"dataframe_records": ROWS[:1]}
    with TestClient(create_app(project)) as client:
        unnamed = client.post("/invocations", json=body)
        by_query = client.post("/invocations?endpoint=other", json=body)
        by_header = client.post("/invocations", json=body, headers={"X-Loopml-Endpoint": "other"})
        both = client.post("/invocations?endpoint=toy", json=body, headers={"X-Loopml-Endpoint": "other"})
        unknown = client.post("/invocations?endpoint=nope", json=body)
    assert unnamed.status_code == 400
    assert "['other', 'toy']" in unnamed.json()["message"] and "?endpoint=NAME" in unnamed.json()["message"]
    assert by_query.status_code == 200 and by_query.headers["x-loopml-endpoint"] == "other"
    assert by_header.status_code == 200 and by_header.headers["x-loopml-endpoint"] == "other"
    assert both.status_code == 400 and "send one" in both.json()["message"]
    assert unknown.status_code == 404
    assert unknown.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "No endpoint named 'nope'" in unknown.json()["message"]


@pytest.mark.parametrize(
    ("content", "content_type", "status", "message"),
    [
        ('{"dataframe_records": [', "application/json", 400, "not valid JSON"),
        ("", "application/json", 400, "body is empty"),
        ("[1, 2]", "application/json", 400, "must be a JSON object"),
        ('{"records": []}', "application/json", 400, "it has ['records']"),
        ('{"inputs": [], "instances": []}', "application/json", 400, "exactly one of"),
        ('{"dataframe_records": {"risk": 1}}', "application/json", 400, "must be a list of row objects"),
        ('{"dataframe_records": []}', "application/json", 400, "at least one row"),
        ('{"dataframe_split": {"data": [[1]], "extra": 1}}', "application/json", 400, "'extra'"),
        (
            '{"dataframe_split": {"columns": ["risk", "risk"], "data": [[1, 2]]}}',
            "application/json",
            400,
            "more than once",
        ),
        ('{"dataframe_split": {"columns": ["risk"], "data": [[1, 2]]}}', "application/json", 400, "Row 0"),
        ('{"inputs": [[0.5, 10.0]]}', "application/json", 400, "must be a list of 3 values"),
        (
            '{"inputs": {"risk": [0.5], "amount": 1.0}}',
            "application/json",
            400,
            "mixes lists and single values",
        ),
        ('{"inputs": [0.5, 0.6]}', "application/json", 400, "fits a model of one input"),
        ('{"inputs": {"risk": [0.5], "amount": [1.0]}}', "application/json", 400, "Missing input 'channel'"),
        (
            '{"inputs": {"risk": [0.5], "amount": ["lots"], "channel": ["web"]}}',
            "application/json",
            400,
            "Input 'amount' must be a number (double) but row 0 has 'lots'",
        ),
        (
            '{"inputs": {"risk": [0.5], "amount": [1], "channel": ["web"], "colour": ["red"]}}',
            "application/json",
            400,
            "Unknown input(s) ['colour']",
        ),
        (
            '{"inputs": {"risk": [0.5], "amount": [1], "channel": ["web"]}, "params": {"predict_method": "score"}}',
            "application/json",
            400,
            "params.predict_method is 'score'",
        ),
        ('{"inputs": {"risk": [0.5]}, "params": [1]}', "application/json", 400, "'params' must be an object"),
        ("risk,amount\n0.5,3", "text/csv", 400, "Missing input 'channel'"),
        ("", "text/csv", 400, "could not be read"),
        ("risk,amount,channel\n0.5,lots,web", "text/csv", 400, "Input 'amount' must be a number"),
        ("a=1", "application/x-www-form-urlencoded", 415, "is not supported"),
        ('{"inputs": {}}', "application/json; charset=latin-1", 415, "send UTF-8"),
    ],
)
def test_bad_requests_get_mlflow_errors(shared, content, content_type, status, message) -> None:
    _, client = shared
    response = client.post("/invocations", content=content, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error_code"] == "BAD_REQUEST"
    assert message in answer["message"]
    assert answer["error"] == answer["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"k" * 50_000: 1},
        {f"key{i}": 1 for i in range(5_000)},
        {"dataframe_split": {"columns": ["c" * 50_000] * 2, "data": [[1, 2]]}},
        {"inputs": {f"col{i}": ([1] if i % 2 else 1) for i in range(5_000)}},
    ],
    ids=["long_key", "many_keys", "long_duplicated_column", "many_mixed_columns"],
)
def test_error_messages_stay_short_whatever_the_names(shared, body) -> None:
    _, client = shared
    response = client.post("/invocations", json=body)
    assert response.status_code == 400, response.text[:500]
    assert len(response.json()["message"]) < 1_000, response.json()["message"][:300]
