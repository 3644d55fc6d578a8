"""Failed requests of a chosen version are logged (rollout analysis compares error rates per version)."""

from __future__ import annotations

import pandas as pd
from fastapi.testclient import TestClient

from loopml.project import Project
from loopml.serving.app import create_app
from loopml.serving.prediction_log import read_request_errors
from tests.helpers import START, build_world, go_live, train_and_deploy


def test_a_request_that_fails_after_routing_is_logged_with_its_version_and_status(
    project: Project, clock
) -> None:
    train_and_deploy(project, build_world(project))
    go_live(project, clock)
    with TestClient(create_app(project)) as client:
        bad = {"entities": {"user_id": 3}, "inputs": {"amount": "lots", "channel": "web"}}
        assert client.post("/v1/endpoints/toy/predict", json=bad).status_code == 400
        assert (
            client.post("/v1/endpoints/nowhere/predict", json=bad).status_code == 404
        )  # no version to blame
        good = {"entities": {"user_id": 3}, "inputs": {"amount": 5.0, "channel": "web"}}
        assert client.post("/v1/endpoints/toy/predict", json=good).status_code == 200
        client.post("/v1/predictions/flush").raise_for_status()
    errors = read_request_errors(project.offline, "toy", START, START + pd.Timedelta(days=30))
    assert len(errors) == 1
    row = errors.iloc[0]
    assert (row.model_name, row.model_version, row.route, row.status, bool(row.served)) == (
        "toy",
        1,
        "primary",
        400,
        True,
    )
    assert "amount" in row.error
