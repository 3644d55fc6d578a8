"""benchmarks/serving.py still runs at toy size and checks its answers; its load generator counts queueing."""

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[1]
MLFLOW = ROOT / ".bench" / "mlflow"


def load_loadgen():
    spec = importlib.util.spec_from_file_location("loadgen", ROOT / "benchmarks" / "loadgen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_serving(output: Path, *flags: str) -> tuple[dict, str]:
    command = [sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--quick", "--output", str(output)]
    result = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(output.read_text()), result.stdout


def check_steps(run: dict) -> None:
    steps = run["steps"]
    assert steps and [s["rate"] for s in steps] == [20, 40][: len(steps)]
    for step in steps:
        assert step["ok"] + step["errors"] == step["requests"] > 0
        kept_up = step["achieved_rate"] >= 0.95 * step["offered_rate"]
        assert step["passed"] == (step["errors"] == 0 and step["p99_ms"] <= 10.0 and kept_up), step
        if step["ok"]:
            assert 0 < step["p50_ms"] <= step["p99_ms"] <= step["max_ms"]
    passed = [s["rate"] for s in steps if s["passed"]]
    assert run["max_rate"] == (max(passed) if passed else None)


@pytest.mark.slow
def test_serving_benchmark_measures_many_models_shadow_and_logging(tmp_path: Path) -> None:
    report, printed = run_serving(tmp_path / "serving.json", "--parts", "many,cost", "--backends", "sqlite")
    many = report["many"]
    assert many["models"] == ["sklearn_00", "lgbm_01", "lgbm_02"]
    run = many["runs"]["sqlite"]
    assert run["agreement"] == {"compared": 6, "endpoints": 3}  # 2 requests per endpoint, scored locally too
    check_steps(run)

    cost = report["cost"]
    assert set(cost["summary"]) == {"base", "shadow", "no_log"}
    assert cost["checks"]["logged_with_logging_on"] > 0
    assert cost["checks"]["logged_with_logging_off"] == 0
    assert cost["checks"]["shadow_scored"] is True
    assert all(r["shadow_predictions"] > 0 for r in cost["runs"]["shadow"])
    assert "mlflow" not in report
    for title in ("1. 3 models", "3. Cost of a shadow route", "Highest rate with p99 <= SLO", "wrote"):
        assert title in printed


@pytest.mark.slow
def test_serving_benchmark_agrees_with_mlflow(tmp_path: Path) -> None:
    if not (MLFLOW / ".installed").exists():
        unavailable(f"MLflow's venv {MLFLOW}", "missing: run `make .bench/mlflow/.installed`")
    report, printed = run_serving(tmp_path / "serving.json", "--parts", "mlflow")
    scoring = report["mlflow"]
    assert scoring["mlflow_version"].startswith("3.")
    # 50 probe rows in one request, then 10 one by one: both servers answer what the model predicts
    assert scoring["mlflow_agreement"] == {"available": True, "compared": 60, "answer": None}
    assert scoring["loopml_agreement"] == {"available": True, "compared": 60, "answer": None}
    check_steps(scoring["mlflow"])
    check_steps(scoring["loopml"])
    assert "ratio" in scoring and "many" not in report and "cost" not in report
    for title in ("2. One scikit-learn Pipeline", "p50 / p99 at equal rates", "MLflow 3."):
        assert title in printed


# ------------------------------------------------------------------------------------------ the generator


@pytest.fixture
def slow_server() -> Iterator[str]:
    """An HTTP server answering one request at a time, 50 ms each; a body of `fail` gets a 500, and after a
    body of `close` it closes the connection without saying so (as servers do with idle keep-alives)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while not stop.is_set():
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                time.sleep(0.05)
                status = b"500 Internal Server Error" if body == b"fail" else b"200 OK"
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")
                if body == b"close":
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_the_generator_counts_queueing_from_the_scheduled_time(slow_server: str) -> None:
    loadgen = load_loadgen()
    request = loadgen.encode_post("127.0.0.1", "/x", b"{}")
    offsets = np.arange(1, 21) * 0.01  # 20 arrivals in 0.2 s on one connection; the server takes 50 ms each
    result = loadgen.run(slow_server, [request], offsets, np.zeros(20, dtype=int), connections=1)
    assert result["ok"] == 20 and result["errors"] == 0
    # the last answer cannot come before 20 x 50 ms = 1 s, and it was due at 0.2 s: a generator timing from
    # the send would report ~50 ms
    assert result["max_ms"] >= 800
    assert result["send_lag_p99_ms"] >= 700  # the wait for the connection shows as the generator's lag


def test_the_generator_reports_failed_requests(slow_server: str) -> None:
    loadgen = load_loadgen()
    requests = [loadgen.encode_post("127.0.0.1", "/x", body) for body in (b"{}", b"fail")]
    result = loadgen.run(slow_server, requests, np.arange(1, 7) * 0.1, np.array([0, 1, 0, 1, 0, 0]))
    assert (result["ok"], result["errors"], result["error_statuses"]) == (4, 2, {"500": 2})
    assert result["first_error"].startswith("HTTP 500")


def test_several_generator_processes_merge_in_schedule_order(slow_server: str) -> None:
    loadgen = load_loadgen()
    requests = [loadgen.encode_post("127.0.0.1", "/x", body) for body in (b"{}", b"fail")]
    offsets, picks = np.arange(1, 7) * 0.1, np.array([1, 1, 0, 0, 0, 0])  # the first two fail
    result = loadgen.run(slow_server, requests, offsets, picks, warmup=0.25, processes=2)
    assert (result["warmup_requests"], result["warmup_errors"]) == (2, 2)  # arrivals 0 (process 0), 1 (1)
    assert (result["requests"], result["ok"], result["errors"]) == (4, 4, 0)


def test_a_request_on_a_connection_the_server_closed_is_sent_again(slow_server: str) -> None:
    loadgen = load_loadgen()
    request = loadgen.encode_post("127.0.0.1", "/x", b"close")
    result = loadgen.run(slow_server, [request], np.arange(1, 4) * 0.1, np.zeros(3, dtype=int), connections=1)
    assert (result["ok"], result["errors"], result["resent_on_new_connection"]) == (3, 0, 2)
