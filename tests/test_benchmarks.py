"""The benchmark scripts still run (at toy sizes) and check their answers: they must not rot between runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FEAST_PYTHON = ROOT / ".bench" / "feast" / "bin" / "python"
TOY = ["--entities", "3000", "--rows", "20000", "--users", "500", "--features", "2", "--repeats", "1"]


def run_features(output: Path, *flags: str) -> dict:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "features.py"),
        *TOY,
        *flags,
        "--output",
        str(output),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(output.read_text())


def test_features_benchmark_runs_and_agrees_with_the_floor(tmp_path: Path) -> None:
    report = run_features(tmp_path / "features.json", "--no-feast")
    systems = [row["system"] for row in report["results"]]
    assert systems == ["raw DuckDB ASOF (floor)", "loopml get_historical_features"]


@pytest.mark.skipif(not FEAST_PYTHON.exists(), reason="no Feast venv: run `make .bench/feast/.installed`")
def test_features_benchmark_agrees_with_feast(tmp_path: Path) -> None:
    report = run_features(tmp_path / "features.json")
    systems = [row["system"] for row in report["results"]]
    assert systems[2:] == ["Feast file offline store (dask)", "Feast DuckDB offline store (ibis)"]
    assert min(check["agreement"] for check in report["feast_agreement"].values()) > 0.999
