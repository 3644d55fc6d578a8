"""`loopml batch-score MODEL_REF --input --output [--fill-cache]`: end to end on a project directory."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from loopml.cli.batch import batch_score
from loopml.config import write_config
from loopml.errors import ValidationError
from loopml.project import Project
from loopml.serving import prediction_cache
from tests.helpers import SPEC, build_world

runner = CliRunner()
STORED = replace(SPEC, model_name="stored", request_features=(), params={"max_iter": 10, "categorical": []})


def cli() -> typer.Typer:
    """The command as `loopml` registers it: `app.command("batch-score")(batch_score)`."""
    app = typer.Typer()
    app.command("batch-score")(batch_score)

    @app.command()
    def other() -> None:
        """Another command, so that `batch-score` is a subcommand as in loopml."""

    return app


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A project with models 'toy' (stored feature and request inputs) and 'stored' (stored feature only)."""
    write_config(tmp_path, "test")
    project = Project(tmp_path)
    try:
        events = build_world(project)
        for spec in (SPEC, STORED):
            version = project.registry.register(project.train(spec, events))
            project.registry.set_alias(spec.model_name, "champion", version.version, reason="test")
    finally:
        project.close()
    rng = np.random.default_rng(1)
    pd.DataFrame(
        {
            "user_id": np.arange(30),
            "risk": rng.random(30),
            "amount": rng.lognormal(3, 1, 30),
            "channel": rng.choice(["web", "app"], 30),
        }
    ).to_parquet(tmp_path / "rows.parquet", index=False)
    return tmp_path


def test_batch_score_writes_predictions_and_prints_the_rate(project_dir: Path) -> None:
    out = project_dir / "scores.parquet"
    args = ["batch-score", "toy@champion", "--input", str(project_dir / "rows.parquet"), "--output", str(out)]
    result = runner.invoke(cli(), [*args, "--chunk-rows", "8", "--project", str(project_dir)])
    assert result.exit_code == 0, result.output
    assert re.search(
        r"Scored 30 rows with toy/1 in \d+\.\d\d s \([\d,]+ rows/s\) into .*scores\.parquet", result.output
    )
    assert "Cache entries" not in result.output
    scored = pd.read_parquet(out)
    assert len(scored) == 30 and scored.prediction.between(0, 1).all()
    assert list(scored.columns) == ["user_id", "prediction", "model_name", "model_version", "scored_at"]


def test_fill_cache_writes_one_entry_per_entity(project_dir: Path) -> None:
    out = project_dir / "scores.parquet"
    result = runner.invoke(
        cli(),
        [
            "batch-score",
            "stored/1",
            "-i",
            str(project_dir / "*.parquet"),
            "-o",
            str(out),
            "--fill-cache",
            "-p",
            str(project_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Cache entries written: 30" in result.output
    project = Project(project_dir)
    try:
        version = project.registry.get_version("stored", 1)
        assert project.online.count(prediction_cache.namespace(version)) == 30
    finally:
        project.close()


def test_batch_score_refuses_what_it_cannot_do(project_dir: Path) -> None:
    out = project_dir / "scores.parquet"
    base = ["-i", str(project_dir / "rows.parquet"), "-o", str(out), "-p", str(project_dir)]
    refused = runner.invoke(cli(), ["batch-score", "toy@champion", *base, "--fill-cache"])
    assert isinstance(refused.exception, ValidationError)
    assert "request-time inputs ['amount', 'channel']" in str(refused.exception)
    bad_ref = runner.invoke(cli(), ["batch-score", "toy", *base])
    assert isinstance(bad_ref.exception, ValidationError)
    assert "must be 'name@alias' or 'name/version'" in str(bad_ref.exception)
    assert not out.exists()
