"""benchmarks/monitoring.py still runs at toy size: loopml in every mode, equal to scipy, peers reported as
missing when their venvs are not installed (they are only for `make bench-monitoring`)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_monitoring_benchmark_runs_loopml_and_agrees_with_scipy(tmp_path: Path) -> None:
    output = tmp_path / "monitoring.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "monitoring.py"),
        "--quick",
        "--rows",
        "20000",
        "--data",
        str(tmp_path / "data"),
        "--output",
        str(output),
        "--peers",
        "",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(output.read_text())["part1"]
    for mode in ("default", "tests", "profiled"):
        run = report["results"][f"loopml/{mode}"]
        assert "error" not in run, run
        drifted = {name for name, f in run["features"].items() if f["drifted"]}
        assert drifted == {"num1", "num4", "num7", "cat2", "cat5", "cat8"}, (mode, drifted)
    assert report["checks"]["loopml_equals_scipy"] is True
    assert report["results"]["loopml/tests"]["features"]["num0"]["method"] == "ks"
