"""benchmarks/registry.py still runs at toy size and checks its answers (both stores hold every value; both
searches return the same runs in the same order)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[1]
MLFLOW = ROOT / ".bench" / "mlflow"


def run_registry(output: Path, *flags: str) -> dict:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "registry.py"),
        "--quick",
        "--output",
        str(output),
        *flags,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(output.read_text())


def test_registry_benchmark_measures_loopml(tmp_path: Path) -> None:
    report = run_registry(tmp_path / "registry.json", "--no-mlflow")
    assert [row["task"] for row in report["logging"]] == ["loopml-batch", "loopml-single"]
    assert all(row["stored_per_run"] == 200 for row in report["logging"])  # 20 steps x 10 metrics, counted
    (search,) = report["search"]
    assert search["task"] == "loopml-search" and search["returned"] > 0
    assert search["plan"][:2] == [
        "MATERIALIZE driver",
        "SEARCH run_params USING INDEX ix_run_params_key_value (key=? AND value=?)",
    ]


def test_registry_benchmark_agrees_with_mlflow(tmp_path: Path) -> None:
    if not (MLFLOW / ".installed").exists():
        unavailable(f"MLflow's venv {MLFLOW}", "missing: run `make .bench/mlflow/.installed`")
    report = run_registry(tmp_path / "registry.json")
    assert [row["task"] for row in report["logging"]] == [
        "loopml-batch",
        "loopml-single",
        "mlflow-sync",
        "mlflow-async",
    ]
    assert all(row["stored_per_run"] == 200 for row in report["logging"])
    assert report["search_agreement"] == {
        "compared": True,
        "runs": report["search"][0]["returned"],
        "same_set": True,
        "same_order": True,
    }
    assert set(report["ratios"]) >= {"mlflow-sync/blocked_seconds", "search"}
    assert report["mlflow_version"].startswith("3.")
