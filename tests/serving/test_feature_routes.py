import time
from collections.abc import Iterator
from datetime import timedelta

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from loopml.features import FeatureService, FeatureView, Field, ParquetSource
from loopml.project import Project
from loopml.serving.app import create_app
from tests.helpers import START, USER, build_world, go_live, train_and_deploy


@pytest.fixture
def client(project: Project, clock) -> Iterator[TestClient]:
    train_and_deploy(project, build_world(project))
    go_live(project, clock)
    with TestClient(create_app(project)) as client:
        yield client


def test_online_read_returns_values_statuses_and_event_times(client: TestClient) -> None:
    answer = client.post(
        "/v1/features/online", json={"entities": {"user_id": [1, 999]}, "features": ["users:risk"]}
    )
    assert answer.status_code == 200, answer.text
    risk = answer.json()["features"]["risk"]
    assert risk["statuses"] == ["present", "missing"]
    assert isinstance(risk["values"][0], float) and risk["values"][1] is None
    assert risk["event_timestamps"][0] == (START + pd.Timedelta(days=10)).timestamp()
    full = client.post(
        "/v1/features/online",
        json={"entities": {"user_id": [1]}, "features": ["users:risk"], "full_feature_names": True},
    )
    assert list(full.json()["features"]) == ["users__risk"]
    metrics = client.get("/metrics").text
    # one present value per read (user 999 has none), both an hour old
    assert 'loopml_feature_age_seconds_bucket{le="900.0",view="users"} 0.0' in metrics
    assert 'loopml_feature_age_seconds_bucket{le="3600.0",view="users"} 2.0' in metrics
    assert "loopml_feature_read_seconds_count 2.0" in metrics


def test_a_feature_service_can_be_read_by_name(project: Project, client: TestClient) -> None:
    project.apply([FeatureService("risk_service", ["users:risk"])])
    body = {"entities": {"user_id": [1]}, "feature_service": "risk_service"}
    deadline = time.monotonic() + 5
    while (answer := client.post("/v1/features/online", json=body)).status_code == 404:
        assert time.monotonic() < deadline, answer.text  # served after the next route refresh
        time.sleep(0.05)
    assert answer.status_code == 200, answer.text
    assert answer.json()["features"]["risk"]["statuses"] == ["present"]
    unknown = client.post("/v1/features/online", json={**body, "feature_service": "nope"})
    assert unknown.status_code == 404 and "risk_service" in unknown.json()["error"]
    both = client.post("/v1/features/online", json={**body, "features": ["users:risk"]})
    assert both.status_code == 400 and "not both" in both.json()["error"]
    neither = client.post("/v1/features/online", json={"entities": {"user_id": [1]}})
    assert neither.status_code == 400 and "feature_service" in neither.json()["error"]


def test_pushed_values_are_served_and_last_write_wins(client: TestClient) -> None:
    def push(risk: float, at: str) -> dict:
        row = {"user_id": 7, "event_timestamp": at, "risk": risk}
        response = client.post("/v1/features/push", json={"view": "users", "rows": [row]})
        assert response.status_code == 200, response.text
        return response.json()

    def read() -> float:
        body = {"entities": {"user_id": [7]}, "features": ["users:risk"]}
        return client.post("/v1/features/online", json=body).json()["features"]["risk"]["values"][0]

    assert push(0.99, "2026-01-11T00:30:00+00:00") == {"written": 1}
    assert read() == 0.99
    push(0.01, "2026-01-10T23:00:00+00:00")  # older than what is stored: ignored
    assert read() == 0.99


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"view": "nope", "rows": [{"user_id": 1}]}, 404, "No feature view named 'nope'"),
        ({"view": "users", "rows": [{"user_id": 1, "risk": 1.0}]}, 400, "lacks ['event_timestamp']"),
        (
            {"view": "users", "rows": [{"user_id": 1, "event_timestamp": "2026-01-01", "risk": 1, "x": 2}]},
            400,
            "unknown field(s) ['x']",
        ),
        (
            {"view": "users", "rows": [{"user_id": 1, "event_timestamp": "yesterday", "risk": 1}]},
            400,
            "ISO 8601",
        ),
        ({"view": "users", "rows": []}, 400, "rows"),
    ],
)
def test_bad_pushes_are_explained(client: TestClient, body, status, message) -> None:
    response = client.post("/v1/features/push", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_bad_online_reads_are_explained(client: TestClient) -> None:
    unknown = client.post("/v1/features/online", json={"entities": {"user_id": [1]}, "features": ["nope:x"]})
    assert unknown.status_code == 404
    malformed = client.post("/v1/features/online", json={"entities": {"user_id": [1]}, "features": ["risk"]})
    assert malformed.status_code == 400 and "view_name:feature_name" in malformed.json()["error"]
    not_json = client.post(
        "/v1/features/online", content=b"{entities", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400 and "Invalid request body" in not_json.json()["error"]
    no_features = client.post("/v1/features/online", json={"entities": {"user_id": [1]}, "features": []})
    assert no_features.status_code == 400 and "features" in no_features.json()["error"]
    uneven = client.post(
        "/v1/features/online",
        json={"entities": {"user_id": [1, 2], "other": [1]}, "features": ["users:risk"]},
    )
    assert uneven.status_code == 400 and "equal lengths" in uneven.json()["error"]


def test_the_online_route_documents_its_body(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["paths"]["/v1/features/online"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema["required"] == ["entities"]
    assert {"features", "feature_service", "request_data"} <= set(schema["properties"])


def test_a_view_applied_while_serving_is_served_after_the_refresh(
    project: Project, client: TestClient
) -> None:
    fresh = FeatureView(
        "late", [USER], ParquetSource("data/users/*.parquet"), [Field("risk")], ttl=timedelta(days=2)
    )
    project.apply([fresh])
    deadline = time.monotonic() + 5
    body = {
        "view": "late",
        "rows": [{"user_id": 1, "event_timestamp": "2026-01-11T00:00:00+00:00", "risk": 0.5}],
    }
    while (response := client.post("/v1/features/push", json=body)).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.05)
