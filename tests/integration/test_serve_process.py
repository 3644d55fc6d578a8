"""`loopml serve` as a real process on loopback: predictions over HTTP, shutdown flushes the log."""

import signal
import threading
from datetime import datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest

from loopml.serving.prediction_log import read_predictions
from loopml.serving.server import ServerProcess
from tests.helpers import START, live_toy_project


@pytest.mark.slow
def test_serve_process_answers_and_flushes_on_shutdown(tmp_path: Path) -> None:
    project, clock = live_toy_project(tmp_path, "it")

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


@pytest.mark.slow
def test_after_sigterm_every_acknowledged_prediction_is_in_the_log(tmp_path: Path) -> None:
    project, clock = live_toy_project(tmp_path, "it")
    server = ServerProcess(tmp_path, clock_file=clock.path)
    url = server.start()
    acknowledged: list[str] = []
    stop = threading.Event()

    def send() -> None:
        body = {"columns": {"user_id": list(range(20)), "amount": [20.0] * 20, "channel": ["app"] * 20}}
        with httpx.Client(base_url=url) as client:
            while not stop.is_set():
                try:
                    response = client.post("/v1/endpoints/toy/predict", json=body)
                except httpx.TransportError:
                    return  # the server is going away: what it answered before counts
                if response.status_code == 200:
                    acknowledged.extend(p["prediction_id"] for p in response.json()["predictions"])

    senders = [threading.Thread(target=send) for _ in range(3)]
    for sender in senders:
        sender.start()
    try:
        while len(acknowledged) < 2_000:
            threading.Event().wait(0.05)
        server.stop(sig=signal.SIGTERM)  # while requests are still arriving
    finally:
        stop.set()
        for sender in senders:
            sender.join()
        server.stop()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status still says SIGTERM
    assert server.process.returncode == -signal.SIGTERM
    logged = read_predictions(
        project.offline, "toy", START.to_pydatetime(), datetime(2100, 1, 1, tzinfo=START.tzinfo)
    )
    assert set(acknowledged) <= set(logged.prediction_id)
    assert len(acknowledged) >= 2_000
