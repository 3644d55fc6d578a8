import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loopml.cli.main import app

runner = CliRunner()
COMMANDS = [
    "features",
    "datasets",
    "init",
    "apply",
    "materialize",
    "train",
    "deploy",
    "serve",
    "events",
    "controller",
    "demo",
    "models",
    "runs",
    "monitor",
    "policy",
    "endpoints",
    "feedback",
    "batch-score",
]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert re.search(rf"│ {command}\s", result.output), command


@pytest.mark.parametrize(
    "command",
    [[c] for c in COMMANDS]
    + [
        ["models", "list"],
        ["models", "show"],
        ["models", "alias"],
        ["models", "history"],
        ["monitor", "drift"],
        ["policy", "list"],
        ["features", "list"],
        ["features", "show"],
        ["features", "skew"],
        ["features", "runs"],
        ["datasets", "list"],
        ["datasets", "show"],
    ],
)
def test_every_command_has_help_text(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    lines = [line.strip() for line in result.output.split("╭")[0].splitlines() if line.strip()]
    assert lines[0].startswith("Usage:")
    description = " ".join(lines[1:])
    assert len(description) > 15, f"{command} has no description"


DEFINITIONS = """
from datetime import timedelta
from loopml import Entity, FeatureView, Field, ParquetSource

user = Entity("user", join_keys=["user_id"])
stats = FeatureView("stats", [user], ParquetSource("data/*.parquet"), [Field("x")], ttl=timedelta(days={days}))
"""


def test_init_apply_and_events_from_the_command_line(tmp_path: Path) -> None:
    assert runner.invoke(app, ["init", str(tmp_path)]).exit_code == 0
    assert (tmp_path / "loopml.yaml").exists()
    (tmp_path / "features.py").write_text(DEFINITIONS.format(days=1))
    first = runner.invoke(app, ["apply", "-p", str(tmp_path)])
    assert (
        first.exit_code == 0 and "Plan: 2 to create, 0 to update, 0 to delete, 0 unchanged." in first.output
    )
    (tmp_path / "features.py").write_text(DEFINITIONS.format(days=2))
    second = runner.invoke(app, ["apply", "-p", str(tmp_path)])
    assert "update" in second.output and "unchanged" in second.output
    events = runner.invoke(app, ["events", "-p", str(tmp_path), "--subject", "feature_view:"])
    assert "feature_view.created" in events.output and "feature_view.updated" in events.output


def test_a_project_file_named_like_an_installed_module_is_refused(tmp_path: Path) -> None:
    runner.invoke(app, ["init", str(tmp_path)])
    (tmp_path / "json.py").write_text(DEFINITIONS.format(days=1))
    result = runner.invoke(app, ["apply", "-p", str(tmp_path)])
    assert result.exit_code == 1
    assert "has the name of the module 'json'" in str(result.exception)
    assert sys.modules["json"].__file__ != str(tmp_path / "json.py")
    other = tmp_path / "other"
    runner.invoke(app, ["init", str(other)])
    (other / "features.py").write_text(DEFINITIONS.format(days=1))
    (tmp_path / "json.py").rename(tmp_path / "features.py")
    for project in (tmp_path, other):  # the same file name in two projects of one process is not shadowing
        assert runner.invoke(app, ["apply", "-p", str(project)]).exit_code == 0


def test_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loopml", "models", "list", "-p", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "run `loopml init` there first" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


TRAINING = """
from datetime import timedelta
from loopml import DriftRetrainPolicy
from tests.helpers import SPEC, USER, user_view

views = [USER, user_view()]
drift = DriftRetrainPolicy("toy_drift", "toy", "toy", drift_window=timedelta(days=1))
"""


def test_train_models_deploy_policy_and_controller_from_the_command_line(tmp_path: Path) -> None:
    from loopml.project import Project
    from tests.helpers import build_world

    runner.invoke(app, ["init", str(tmp_path)])
    build_world(Project(tmp_path)).to_parquet(tmp_path / "labelled.parquet")
    (tmp_path / "toy.py").write_text(TRAINING)
    p = ["-p", str(tmp_path)]

    def run(*args: str) -> str:
        result = runner.invoke(app, [*args, *p])
        assert result.exit_code == 0, result.output
        return result.output

    assert "policy" in run("apply")
    assert "Registered toy/1" in run(
        "train", "toy", "--data", str(tmp_path / "labelled.parquet"), "--alias", "champion"
    )
    assert "champion → v1" in run("models", "list")
    assert "users:risk" in run("models", "show", "toy@champion")
    run("train", "toy", "--data", str(tmp_path / "labelled.parquet"))
    run("models", "alias", "toy", "champion", "2", "--reason", "manual promotion")
    history = run("models", "history", "toy", "champion")
    assert "manual promotion" in history and "v1" in history and "v2" in history
    assert "endpoint 'toy' → primary toy@champion (primary, 100%)" in run("deploy", "toy", "--model", "toy")
    assert "endpoint.deployed" in run("events", "--kind", "endpoint.deployed")
    assert "toy_drift" in run("policy", "list")
    assert "toy_drift: skipped: only 0 predictions" in " ".join(run("controller", "--once").split())
    assert "run.finished" in run("events", "--subject", "run:")
    listed = run("features", "list")
    assert "feature_view" in listed and "users" in listed and "join keys user_id" in listed
    assert "ttl_seconds: 172800.0" in run("features", "show", "users")
    snapshots = run("datasets", "list")
    assert "toy-training" in snapshots
    snapshot_id = Project(tmp_path).metadata.events(kind="dataset.snapshotted")[0].subject.split(":", 1)[1]
    assert "content_hash" in run("datasets", "show", snapshot_id)
