"""benchmarks/features_online.py still runs at a toy size and checks its answers (loopml only, no Feast)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(tmp_path: Path, backends: str) -> list[dict[str, object]]:
    output = tmp_path / "features_online.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "features_online.py"),
        "--no-feast",
        *("--backends", backends, "--users", "200", "--rate", "50", "--duration", "1", "--warmup", "0.2"),
        *("--output", str(output)),
    ]
    environ = {**os.environ, "LOOPML_BENCH_REDIS_URL": REDIS_URL}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environ)
    assert result.returncode == 0, result.stderr
    return json.loads(output.read_text())["results"]


def check_rows(rows: list[dict[str, object]], backend: str) -> None:
    assert [(r["system"], r["backend"], r["mode"]) for r in rows] == [
        ("loopml", backend, "in-process"),
        ("loopml", backend, "http"),
        ("floor", "-", "http"),
    ]
    for row in rows:
        assert row["errors"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"]


@pytest.mark.slow
def test_online_benchmark_runs_on_sqlite(tmp_path: Path) -> None:
    check_rows(run_benchmark(tmp_path, "sqlite"), "sqlite")


@pytest.mark.slow
def test_online_benchmark_runs_on_redis(tmp_path: Path, redis_prefix: str) -> None:
    # redis_prefix skips when Redis on 127.0.0.1:6379 is unreachable (and fails under CI=true)
    check_rows(run_benchmark(tmp_path, "redis"), "redis")
