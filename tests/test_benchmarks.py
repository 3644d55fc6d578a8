"""The benchmark scripts still run (at toy sizes) and check their answers: they must not rot between runs."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_features_benchmark_runs_and_agrees_with_the_floor(tmp_path: Path) -> None:
    output = tmp_path / "features.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "features.py"),
        "--entities",
        "3000",
        "--rows",
        "20000",
        "--users",
        "500",
        "--features",
        "2",
        "--repeats",
        "1",
        "--output",
        str(output),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    systems = [row["system"] for row in json.loads(output.read_text())["results"]]
    assert systems == ["raw DuckDB ASOF (floor)", "loopml get_historical_features"]
