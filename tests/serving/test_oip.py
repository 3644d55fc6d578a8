"""The Open Inference Protocol v2 routes: metadata, readiness, inference, the model repository and errors."""

from collections.abc import Iterator
from dataclasses import replace

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from loopml.project import Project
from loopml.serving.app import create_app
from loopml.serving.endpoints import configure, deploy
from loopml.serving.prediction_log import read_predictions
from tests.helpers import SPEC, START, build_world, go_live, train_and_deploy

ROWS = {"risk": [0.1, 0.9, 0.5], "amount": [10.0, 80.0, 35.5], "channel": ["web", "app", "web"]}


@pytest.fixture
def served(project: Project, clock) -> Iterator[tuple[Project, TestClient]]:
    events = build_world(project)
    train_and_deploy(project, events)
    go_live(project, clock)
    with TestClient(create_app(project)) as client:
        yield project, client


def column(name: str, values: list, datatype: str = "FP64", shape: list[int] | None = None) -> dict:
    return {"name": name, "shape": shape or [len(values)], "datatype": datatype, "data": values}


def toy_inputs(rows: dict = ROWS) -> list[dict]:
    return [
        column("risk", rows["risk"]),
        column("amount", rows["amount"]),
        column("channel", rows["channel"], "BYTES"),
    ]


def infer(client: TestClient, body: dict, path: str = "/v2/models/toy/infer", **kwargs) -> dict:
    response = client.post(path, json=body, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def outputs(answer: dict) -> dict[str, dict]:
    return {output["name"]: output for output in answer["outputs"]}


def test_server_metadata_and_health(served) -> None:
    _, client = served
    assert client.get("/v2").json() == {
        "name": "loopml",
        "version": "0.1.0",
        "extensions": ["model_repository", "parameters"],
    }
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata_types_the_inputs_and_outputs(served) -> None:
    project, client = served
    version = project.registry.get_version("toy", 1)
    expected = {
        "name": "toy",
        "versions": ["1"],
        "platform": f"loopml_{version.flavor}",
        "inputs": [
            {"name": "amount", "datatype": "FP64", "shape": [-1]},
            {"name": "channel", "datatype": "BYTES", "shape": [-1]},
            {"name": "risk", "datatype": "FP64", "shape": [-1]},
        ],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
        ],
    }
    assert client.get("/v2/models/toy").json() == expected
    assert client.get("/v2/models/toy/versions/1").json() == expected


def test_model_readiness(served) -> None:
    _, client = served
    for path in ("/v2/models/toy/ready", "/v2/models/toy/versions/1/ready"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json() == {"name": "toy", "ready": True}


def test_infer_by_columns_equals_the_loopml_json_route(served) -> None:
    _, client = served
    answer = infer(client, {"id": "req-1", "inputs": toy_inputs()})
    loopml = client.post("/v1/endpoints/toy/predict", json={"columns": ROWS}).json()
    assert answer["model_name"] == "toy" and answer["model_version"] == "1" and answer["id"] == "req-1"
    assert answer["parameters"]["route"] == "primary"
    assert len(answer["parameters"]["prediction_ids"]) == 3
    tensors = outputs(answer)
    assert tensors["predict"]["shape"] == [3] and tensors["predict"]["datatype"] == "INT64"
    proba = tensors["predict_proba"]
    assert proba["shape"] == [3, 2] and proba["datatype"] == "FP64" and len(proba["data"]) == 6
    positive = proba["data"][1::2]
    assert positive == [p["output"] for p in loopml["predictions"]]
    assert tensors["predict"]["data"] == [int(p > 0.5) for p in positive]


def test_infer_by_entity_keys_fetches_stored_features(served) -> None:
    _, client = served
    users, amounts, channels = [1, 2, 3], [20.0, 60.0, 5.0], ["app", "web", "web"]
    body = {
        "inputs": [
            column("user_id", users, "INT64"),
            column("amount", amounts, shape=[3, 1]),
            column("channel", [[c] for c in channels], "BYTES", shape=[3, 1]),
        ],
        "outputs": [{"name": "predict_proba"}],
    }
    answer = infer(client, body)
    loopml = client.post(
        "/v1/endpoints/toy/predict",
        json={"entities": {"user_id": users}, "inputs": {"amount": amounts, "channel": channels}},
    ).json()
    assert [o["name"] for o in answer["outputs"]] == ["predict_proba"]
    assert answer["outputs"][0]["data"][1::2] == [p["output"] for p in loopml["predictions"]]
    assert answer["id"] == answer["parameters"]["prediction_ids"][0]


def test_infer_takes_one_2d_tensor_of_all_inputs(project: Project, clock) -> None:
    spec = replace(
        SPEC, model_name="num", request_features=("amount",), params={"max_iter": 20, "categorical": []}
    )
    version = project.registry.register(project.train(spec, build_world(project)))
    project.registry.set_alias("num", "champion", version.version, reason="test")
    deploy(project.metadata, project.registry, "num", "num")
    with TestClient(create_app(project)) as client:
        matrix = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[40, 0.2], [90.5, 0.7]]}
        flat = {**matrix, "data": [40, 0.2, 90.5, 0.7]}
        answers = [infer(client, {"inputs": [body]}, "/v2/models/num/infer") for body in (matrix, flat)]
        loopml = client.post(
            "/v1/endpoints/num/predict", json={"columns": {"risk": [0.2, 0.7], "amount": [40, 90.5]}}
        ).json()
        wrong = client.post("/v2/models/num/infer", json={"inputs": [{**matrix, "shape": [1, 4]}]})
    expected = [p["output"] for p in loopml["predictions"]]
    assert [outputs(a)["predict_proba"]["data"][1::2] for a in answers] == [expected, expected]
    assert wrong.status_code == 400
    assert "Input 'x' has 4 columns but the model takes 2 inputs ['amount', 'risk']" in wrong.json()["error"]


def test_parameters_unit_id_is_logged_with_the_prediction(served) -> None:
    project, client = served
    answer = infer(client, {"parameters": {"unit_id": "user-7"}, "inputs": toy_inputs()})
    client.post("/v1/predictions/flush").raise_for_status()
    logged = read_predictions(project.offline, "toy", START, START + pd.Timedelta(days=11))
    assert sorted(logged.prediction_id) == sorted(answer["parameters"]["prediction_ids"])
    assert set(logged.unit_id) == {"user-7"}


def test_binary_data_output_is_answered_in_json_with_every_output(served) -> None:
    _, client = served
    body = {"parameters": {"binary_data_output": True}, "inputs": toy_inputs(), "outputs": []}
    response = client.post("/v2/models/toy/infer", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in response.headers
    assert [output["name"] for output in response.json()["outputs"]] == ["predict", "predict_proba"]


def test_a_shadow_version_is_listed_pinnable_and_mirrored(served) -> None:
    project, client = served
    v2 = project.registry.register(project.train(SPEC, build_world(project, seed=1)))
    deploy(project.metadata, project.registry, "toy", "toy", version=v2.version, mode="shadow", weight=100)
    assert client.post("/v2/repository/models/toy/load").status_code == 200  # picks the change up now
    assert client.get("/v2/models/toy").json()["versions"] == ["1", "2"]
    assert client.get("/v2/models/toy/versions/2/ready").status_code == 200

    pinned = infer(client, {"inputs": toy_inputs()}, "/v2/models/toy/versions/2/infer")
    routed = infer(client, {"inputs": toy_inputs()})
    assert pinned["model_version"] == "2" and routed["model_version"] == "1"
    client.post("/v1/predictions/flush").raise_for_status()
    logged = read_predictions(
        project.offline, "toy", START, START + pd.Timedelta(days=11), include_shadow=True
    )
    by_request = logged.groupby(["model_version", "route", "served"]).size().to_dict()
    assert by_request == {(1, "primary", True): 3, (2, "shadow", True): 3, (2, "shadow", False): 3}


def test_unload_and_load_through_the_repository_api(served) -> None:
    _, client = served
    body = {"inputs": toy_inputs()}
    assert client.post("/v2/repository/index").json() == [
        {"name": "toy", "version": "1", "state": "READY", "reason": ""}
    ]
    assert client.post("/v2/repository/models/toy/unload").json() == {}

    assert client.get("/v2/models/toy/ready").status_code == 503
    assert client.get("/v2/models/toy/versions/1/ready").status_code == 503
    refused = client.post("/v2/models/toy/infer", json=body)
    assert refused.status_code == 503 and "unloaded" in refused.json()["error"]
    assert client.get("/v2/models/toy").status_code == 503
    assert client.get("/v2/health/ready").status_code == 200  # unloading on purpose keeps the server ready
    index = client.post("/v2/repository/index", json={}).json()
    assert index == [{"name": "toy", "state": "UNLOADED", "reason": "unloaded through the API"}]
    assert client.post("/v2/repository/index", json={"ready": True}).json() == []

    assert client.post("/v2/repository/models/toy/load", json={"parameters": {}}).json() == {}
    assert client.get("/v2/models/toy/ready").status_code == 200
    assert infer(client, body)["model_version"] == "1"
    assert client.post("/v2/repository/index", json={"ready": True}).json()[0]["state"] == "READY"


def test_a_null_input_follows_the_endpoint_nan_policy(served) -> None:
    project, client = served
    rows = {**ROWS, "amount": [10.0, None, 35.5]}
    refused = client.post("/v2/models/toy/infer", json={"inputs": toy_inputs(rows)})
    assert refused.status_code == 400
    assert "Input 'amount' is null or NaN in row 1" in refused.json()["error"]

    configure(project.metadata, "toy", nan_policy="allow")
    client.post("/v2/repository/models/toy/load").raise_for_status()
    answer = infer(client, {"inputs": toy_inputs(rows)})
    assert len(outputs(answer)["predict_proba"]["data"]) == 6


def inputs_with(name: str, **changes) -> list[dict]:
    return [{**tensor, **changes} if tensor["name"] == name else tensor for tensor in toy_inputs()]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nope/infer", {"inputs": toy_inputs()}, 404, "No endpoint named 'nope'"),
        ("/v2/models/toy/versions/7/infer", {"inputs": toy_inputs()}, 404, "no version '7' loaded"),
        ("/v2/models/toy/versions/x/infer", {"inputs": toy_inputs()}, 404, "no version 'x' loaded"),
        (
            "/v2/models/toy/infer",
            {"inputs": inputs_with("amount", shape=[2])},
            400,
            "Input 'amount' has 3 values but its shape [2] needs 2",
        ),
        (
            "/v2/models/toy/infer",
            {"inputs": inputs_with("amount", shape=[3, 2])},
            400,
            "Input 'amount' has shape [3, 2]",
        ),
        (
            "/v2/models/toy/infer",
            {"inputs": inputs_with("amount", data=[1.0, "lots", 2.0])},
            400,
            "Input 'amount' is FP64 but element 1 is 'lots'",
        ),
        (
            "/v2/models/toy/infer",
            {"inputs": inputs_with("channel", datatype="FP64", data=[1, 2, 3])},
            400,
            "Input 'channel' must be a string",
        ),
        (
            "/v2/models/toy/infer",
            {"inputs": inputs_with("amount", datatype="INT8", data=[1, 2, 300])},
            400,
            "Input 'amount' (INT8) has 300, outside [-128, 127]",
        ),
        (
            "/v2/models/toy/infer",
            {"inputs": inputs_with("amount", datatype="FP128")},
            400,
            "inputs.1.datatype",
        ),
        (
            "/v2/models/toy/infer",
            {"inputs": inputs_with("amount", data=[1.0], shape=[1])},
            400,
            "different row counts",
        ),
        ("/v2/models/toy/infer", {"inputs": toy_inputs()[:2]}, 400, "Missing input 'channel'"),
        (
            "/v2/models/toy/infer",
            {"inputs": [*toy_inputs(), column("colour", ["r", "g", "b"], "BYTES")]},
            400,
            "Unknown input(s) ['colour']",
        ),
        ("/v2/models/toy/infer", {"inputs": []}, 400, "inputs"),
        (
            "/v2/models/toy/infer",
            {"inputs": toy_inputs(), "outputs": [{"name": "scores"}]},
            400,
            "Unknown output(s) ['scores']",
        ),
        (
            "/v2/models/toy/infer",
            {"inputs": toy_inputs(), "parameters": {"unit_id": [1]}},
            400,
            "parameters.unit_id must be a string",
        ),
        ("/v2/models/toy/infer", {"inputs": [column("risk", [], shape=[0])]}, 400, "no rows"),
        ("/v2/repository/models/nope/load", {}, 404, "No endpoint named 'nope'"),
        ("/v2/repository/models/nope/unload", {}, 404, "No endpoint named 'nope'"),
        ("/v2/repository/index", {"ready": "maybe"}, 400, "ready"),
    ],
)
def test_bad_requests_get_json_errors(served, path, body, status, message) -> None:
    _, client = served
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/nope", 404),
        ("/v2/models/nope/ready", 404),
        ("/v2/models/toy/versions/3", 404),
        ("/v2/models/toy/versions/3/ready", 404),
    ],
)
def test_unknown_models_and_versions_are_404(served, path, status) -> None:
    _, client = served
    response = client.get(path)
    assert response.status_code == status
    assert "error" in response.json()


def test_binary_tensors_and_broken_json_are_refused(served) -> None:
    _, client = served
    binary = client.post(
        "/v2/models/toy/infer",
        content=b'{"inputs": []}\x00\x00',
        headers={"Inference-Header-Content-Length": "14", "Content-Type": "application/octet-stream"},
    )
    assert binary.status_code == 400 and "Binary tensor data" in binary.json()["error"]
    broken = client.post(
        "/v2/models/toy/infer", content=b'{"inputs": [', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400 and "Invalid request body" in broken.json()["error"]


def test_the_openapi_schema_documents_every_body(served) -> None:
    _, client = served
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/v2/repository/index",
        "/v2/repository/models/{name}/load",
        "/v2/repository/models/{name}/unload",
    ):
        assert "requestBody" in paths[path]["post"], path
    infer_body = paths["/v2/models/{name}/infer"]["post"]["requestBody"]
    assert infer_body["required"] is True
    assert paths["/v2/repository/index"]["post"]["requestBody"]["required"] is False
