"""Triton's own HTTP client against `loopml serve`: the Open Inference Protocol as third-party clients speak it."""

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from loopml.serving.server import ServerProcess
from tests.helpers import live_toy_project

pytestmark = pytest.mark.slow
ROWS = {"amount": [10.0, 80.0, 35.5], "channel": ["web", "app", "web"], "risk": [0.1, 0.9, 0.5]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("oip")
    _, clock = live_toy_project(path, "oip")
    process = ServerProcess(path, clock_file=clock.path)
    url = process.start()
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture
def client(server: str) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(server.removeprefix("http://"))
    try:
        yield triton
    finally:
        triton.close()


def inputs(rows: dict = ROWS) -> list:
    tensors = []
    for name, values in rows.items():
        array = np.asarray(values, dtype=object if isinstance(values[0], str) else np.float64)
        tensor = httpclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP64")
        tensor.set_data_from_numpy(array, binary_data=False)
        tensors.append(tensor)
    return tensors


def test_health_and_metadata(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "loopml" and "model_repository" in server["extensions"]
    model = client.get_model_metadata("toy")
    assert model["versions"] == ["1"]
    assert [i["name"] for i in model["inputs"]] == list(ROWS)
    assert client.get_model_metadata("toy", "1") == model
    assert client.is_model_ready("toy") and client.is_model_ready("toy", "1")
    assert not client.is_model_ready("toy", "9") and not client.is_model_ready("nope")


def test_infer_matches_the_loopml_route(client, server: str) -> None:
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=False) for name in ("predict", "predict_proba")
    ]
    result = client.infer("toy", inputs(), outputs=outputs, request_id="r1", parameters={"unit_id": "u1"})
    proba = result.as_numpy("predict_proba")
    assert proba.shape == (3, 2) and result.as_numpy("predict").shape == (3,)
    response = result.get_response()
    assert response["id"] == "r1" and response["model_version"] == "1"
    loopml = httpx.post(f"{server}/v1/endpoints/toy/predict", json={"columns": ROWS}).json()
    assert proba[:, 1].tolist() == [p["output"] for p in loopml["predictions"]]

    default = client.infer("toy", inputs(), model_version="1")  # asks for binary outputs; gets JSON
    assert np.array_equal(default.as_numpy("predict_proba"), proba)


def test_errors_surface_as_inference_server_exceptions(client) -> None:
    with pytest.raises(InferenceServerException, match="No endpoint named 'nope'") as unknown:
        client.get_model_metadata("nope")
    assert unknown.value.status() == "404"
    with pytest.raises(InferenceServerException, match="Unknown output"):
        client.infer("toy", inputs(), outputs=[httpclient.InferRequestedOutput("scores", binary_data=False)])
    with pytest.raises(InferenceServerException, match="Missing input 'channel'"):
        client.infer("toy", inputs({k: v for k, v in ROWS.items() if k != "channel"}))
    binary = httpclient.InferInput("amount", [3], "FP64")
    binary.set_data_from_numpy(np.asarray(ROWS["amount"]))  # binary by default
    with pytest.raises(InferenceServerException, match="Binary tensor data") as refused:
        client.infer("toy", [binary, *inputs()[1:]])
    assert refused.value.status() == "400"


def test_repository_index_unload_and_load(client) -> None:
    assert client.get_model_repository_index() == [
        {"name": "toy", "version": "1", "state": "READY", "reason": ""}
    ]
    client.unload_model("toy")
    assert not client.is_model_ready("toy")
    assert client.get_model_repository_index()[0]["state"] == "UNLOADED"
    with pytest.raises(InferenceServerException, match="unloaded") as refused:
        client.infer("toy", inputs())
    assert refused.value.status() == "503"
    client.load_model("toy")
    assert client.is_model_ready("toy")
    assert client.infer("toy", inputs()).as_numpy("predict_proba").shape == (3, 2)
    with pytest.raises(InferenceServerException, match="No endpoint named 'nope'"):
        client.load_model("nope")
