"""`loopml feedback FILE`: labels from a file into the project's offline store, with a count and the file."""

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from loopml.cli.feedback import feedback
from loopml.config import write_config
from loopml.errors import ValidationError
from loopml.project import Project
from loopml.serving.prediction_log import LABELS

runner = CliRunner()


def cli() -> typer.Typer:
    """The command as `loopml` registers it: `app.command()(feedback)` in a multi-command app."""
    app = typer.Typer()
    app.command()(feedback)

    @app.command()
    def other() -> None:
        """Another command, so that `feedback` is a subcommand as in loopml."""

    return app


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    write_config(tmp_path, "test")
    return tmp_path


def test_feedback_records_the_labels_of_a_file(project_dir: Path) -> None:
    file = project_dir / "labels.csv"
    file.write_text("prediction_id,label,ts\np0,1,2026-03-01T13:00:00Z\np1,0,2026-03-02T13:00:00Z\n")
    result = runner.invoke(cli(), ["feedback", str(file), "--project", str(project_dir)])
    assert result.exit_code == 0, result.output
    assert "Recorded 2 labels from" in result.output and "labels.csv" in result.output
    project = Project(project_dir)
    try:
        labels = project.offline.read(LABELS)
    finally:
        project.close()
    assert sorted(labels.prediction_id) == ["p0", "p1"]


def test_feedback_refuses_a_bad_file_and_a_missing_one(project_dir: Path) -> None:
    bad = project_dir / "labels.csv"
    bad.write_text("prediction_id,label\np0,maybe\n")
    result = runner.invoke(cli(), ["feedback", str(bad), "-p", str(project_dir)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ValidationError)
    assert "line 2: label 'maybe' is not a number" in str(result.exception)
    missing = runner.invoke(cli(), ["feedback", str(project_dir / "absent.csv"), "-p", str(project_dir)])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_feedback_has_help() -> None:
    result = runner.invoke(cli(), ["feedback", "--help"])
    assert result.exit_code == 0
    assert "prediction_id,label" in result.output and "latest label" in result.output
