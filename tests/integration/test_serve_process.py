"""`loopml serve` as a real process on loopback: predictions over HTTP, shutdown flushes the log."""

from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest

from loopml.clock import FileClock
from loopml.config import write_config
from loopml.project import Project
from loopml.serving.prediction_log import read_predictions
from loopml.serving.server import ServerProcess
from tests.helpers import START, build_world, train_and_deploy


@pytest.mark.slow
def test_serve_process_answers_and_flushes_on_shutdown(tmp_path: Path) -> None:
    write_config(tmp_path, "it")
    clock = FileClock(tmp_path / "clock", start=START.to_pydatetime())
    project = Project(tmp_path, clock=clock)
    train_and_deploy(project, build_world(project))
    project.materialize(end=START + pd.Timedelta(days=10))
    clock.set(START.to_pydatetime() + timedelta(days=10, hours=1))

    server = ServerProcess(tmp_path, clock_file=clock.path)
    url = server.start()
    try:
        body = {"entities": {"user_id": 1}, "inputs": {"amount": 20.0, "channel": "app"}}
        answers = [httpx.post(f"{url}/v1/endpoints/toy/predict", json=body).json() for _ in range(3)]
        assert {a["model_version"] for a in answers} == {1}
        assert httpx.get(f"{url}/v1/endpoints").json()["endpoints"][0]["endpoint"] == "toy"
    finally:
        server.stop()
    assert server.process.returncode == 0
    logged = read_predictions(
        project.offline, "toy", START.to_pydatetime(), datetime(2100, 1, 1, tzinfo=START.tzinfo)
    )
    assert sorted(logged.prediction_id) == sorted(a["prediction_id"] for a in answers)
    assert (pd.to_datetime(logged.ts, utc=True) == START + pd.Timedelta(days=10, hours=1)).all()
