"""`loopml serve --workers 2`: two processes on one port behave as one server."""

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from loopml.cli.main import app
from loopml.clock import FileClock
from loopml.config import write_config
from loopml.project import Project
from loopml.serving.prediction_log import read_predictions
from loopml.serving.server import ServerProcess
from tests.helpers import SPEC, START, build_world, go_live, train_and_deploy

BODY = {"entities": {"user_id": 1}, "inputs": {"amount": 20.0, "channel": "app"}}
PROPAGATION_SECONDS = 1.5  # route refreshes run every 0.5 s in each worker


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[Project, ServerProcess, str, int]]:
    """The toy endpoint on two workers, with a second version registered but not yet champion."""
    write_config(tmp_path, "workers")
    clock = FileClock(tmp_path / "clock", start=START.to_pydatetime())
    project = Project(tmp_path, clock=clock)
    events = build_world(project)
    train_and_deploy(project, events)
    second = project.registry.register(project.train(SPEC, events.sample(frac=0.7, random_state=1)))
    go_live(project, clock)
    server = ServerProcess(tmp_path, clock_file=clock.path, workers=2)
    url = server.start()
    try:
        yield project, server, url, second.version
    finally:
        server.stop()
        project.close()


def fresh(url: str, path: str, *, json: dict | None = None) -> httpx.Response:
    """One request on a new connection (the kernel picks the worker per connection)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.post(path, json=json) if json is not None else client.get(path)


def worker_pids(server: ServerProcess) -> set[int]:
    """The server's worker processes (multiprocessing also starts a resource tracker beside them)."""
    assert server.process is not None
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == server.process.pid and b"spawn_main" in command:
                children.add(int(entry.name))
    return children


def requests_total(url: str) -> float:
    lines = fresh(url, "/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("loopml_requests_total{"))


def wait_until(condition, seconds: float = PROPAGATION_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.slow
def test_workers_share_the_traffic_the_metrics_and_the_log(two_workers) -> None:
    project, server, url, _ = two_workers
    workers = worker_pids(server)
    assert len(workers) == 2
    answers = [fresh(url, "/v1/endpoints/toy/predict", json=BODY) for _ in range(60)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["output"] for a in answers}) == 1  # every worker serves the same model
    # Sixty connections spread over both workers; whichever answers /metrics counts the requests of both.
    assert requests_total(url) == 60

    server.stop(sig=signal.SIGTERM)
    assert server.process is not None and server.process.returncode == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    logged = read_predictions(
        project.offline, "toy", START.to_pydatetime(), datetime(2100, 1, 1, tzinfo=START.tzinfo)
    )
    assert sorted(logged.prediction_id) == sorted(a.json()["prediction_id"] for a in answers)
    assert len(list(project.offline.root.glob("predictions/*/*.parquet"))) >= 2  # one writer per worker


@pytest.mark.slow
def test_unload_and_load_reach_every_worker(two_workers) -> None:
    _, _, url, _ = two_workers
    assert fresh(url, "/v2/repository/models/toy/unload", json={}).status_code == 200

    def all_refused() -> bool:
        return all(fresh(url, "/v1/endpoints/toy/predict", json=BODY).status_code == 503 for _ in range(20))

    assert wait_until(all_refused)
    index = fresh(url, "/v2/repository/index", json={}).json()
    assert {m["state"] for m in index if m["name"] == "toy"} == {"UNLOADED"}

    assert fresh(url, "/v2/repository/models/toy/load", json={}).status_code == 200
    assert wait_until(
        lambda: all(fresh(url, "/v1/endpoints/toy/predict", json=BODY).status_code == 200 for _ in range(20))
    )


@pytest.mark.slow
def test_an_alias_move_reaches_every_worker_within_the_refresh(two_workers) -> None:
    project, _, url, second = two_workers
    project.registry.set_alias(SPEC.model_name, "champion", second, reason="test")

    def all_new() -> bool:
        versions = {
            fresh(url, "/v1/endpoints/toy/predict", json=BODY).json()["model_version"] for _ in range(20)
        }
        return versions == {second}

    assert wait_until(all_new)


def test_a_bad_worker_count_is_refused_with_what_to_use(tmp_path: Path) -> None:
    write_config(tmp_path, "workers")
    result = CliRunner().invoke(app, ["serve", "--project", str(tmp_path), "--workers", "0"])
    assert result.exit_code != 0
    assert "from 1 to 64" in str(result.exception)


def test_a_port_in_use_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    import socket

    write_config(tmp_path, "workers")
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even one that shares its port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            app, ["serve", "--project", str(tmp_path), "--workers", "2", "--port", str(port)]
        )
    assert result.exit_code != 0
    assert f"Cannot listen on 127.0.0.1:{port}" in str(result.exception)
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # this process's metrics stay its own
