"""`loopml train PIPELINE`: parameters from loopml.yaml and --param, cached re-runs, failures and --resume."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from typer.testing import CliRunner

from loopml.cli.main import app
from loopml.errors import NotFoundError, ValidationError

runner = CliRunner()

PIPELINES = """
from pathlib import Path

from loopml.training import Pipeline, log_metric, step


@step
def numbers(count: int = 4) -> list:
    return list(range(count))


@step(cache=True)  # reads only the project's files and config, which the test controls
def scaled(numbers: list, factor: float = 1.0, project=None) -> list:
    if (project.path / "broken").exists():
        raise RuntimeError("the data source is down")
    return [n * factor for n in numbers]


@step(cache=True)
def summary(scaled: list, project) -> dict:
    log_metric("total", sum(scaled))
    return {"total": sum(scaled), "project": project.config["project"]}


demo = Pipeline("demo", steps=[numbers, scaled, summary])
"""


@pytest.fixture(params=["sqlite", "postgres"])
def project_dir(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A project made by `loopml init`, with a pipelines file; its metadata on SQLite, then PostgreSQL."""
    if request.param == "postgres":
        url, connect_args = request.getfixturevalue("postgres_schema")
        monkeypatch.setenv("LOOPML_METADATA__URL", f"{url}?options={quote(connect_args['options'])}")
    directory = tmp_path / "proj"
    result = runner.invoke(app, ["init", str(directory), "--name", "cli-demo"])
    assert result.exit_code == 0, result.output
    (directory / "lm_cli_pipelines.py").write_text(PIPELINES)
    yield directory


def train(directory: Path, *args: str) -> tuple[int, str, BaseException | None]:
    result = runner.invoke(app, ["train", *args, "--project", str(directory)])
    return result.exit_code, result.output, result.exception


def statuses(output: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*(numbers|scaled|summary)\s+(ran|cached|kept|failed|not run)", output, re.M))


def run_id(output: str) -> str:
    found = re.search(r"Pipeline run (\S+) of 'demo' succeeded", output)
    assert found, output
    return found.group(1)


def test_train_runs_a_pipeline_with_params_caches_and_resumes(project_dir: Path) -> None:
    config = yaml.safe_load((project_dir / "loopml.yaml").read_text())
    config["pipelines"] = {"demo": {"params": {"factor": 2.0, "count": 3}}}
    (project_dir / "loopml.yaml").write_text(yaml.safe_dump(config))

    code, output, _ = train(project_dir, "demo", "--param", "count=5")
    assert code == 0, output
    assert statuses(output) == {"numbers": "ran", "scaled": "ran", "summary": "ran"}
    first = run_id(output)

    code, output, _ = train(project_dir, "demo", "--param", "count=5")
    assert statuses(output) == {"numbers": "cached", "scaled": "cached", "summary": "cached"}

    from loopml.project import Project
    from loopml.training import Tracker, get_pipeline_run

    project = Project(project_dir)
    try:
        run = get_pipeline_run(project.metadata, first, artifacts=project.artifacts)
        assert run.params == {"count": 5, "factor": 2.0}  # --param over loopml.yaml over the signature
        assert run.output("summary") == {"total": 20.0, "project": "cli-demo"}
        assert Tracker(project.metadata).get_run(run.run_id or "").metrics["total"] == 20.0
    finally:
        project.close()

    (project_dir / "broken").touch()
    code, output, _ = train(project_dir, "demo", "--param", "factor=3")
    assert code == 1
    assert statuses(output) == {"numbers": "ran", "scaled": "failed", "summary": "not run"}  # count=3 (yaml)
    failed = re.search(r"--resume (\S+)`", output)
    assert failed and "RuntimeError: the data source is down" in output

    (project_dir / "broken").unlink()
    code, output, _ = train(project_dir, "demo", "--resume", failed.group(1))
    assert code == 0, output
    assert statuses(output) == {"numbers": "kept", "scaled": "ran", "summary": "ran"}
    assert run_id(output) == failed.group(1)


def test_train_explains_bad_names_and_params(tmp_path: Path) -> None:
    runner.invoke(app, ["init", str(tmp_path)])
    (tmp_path / "lm_cli_pipelines.py").write_text(PIPELINES)
    _, _, error = train(tmp_path, "demo", "--param", "count=many")
    assert isinstance(error, ValidationError) and "'count' = 'many' is str, but its default 4 is int" in str(
        error
    )
    _, _, error = train(tmp_path, "demo", "--param", "cnt=1")
    assert isinstance(error, ValidationError) and "its parameters are ['count', 'factor']" in str(error)
    _, _, error = train(tmp_path, "nope")
    assert isinstance(error, NotFoundError) and "pipelines found: ['demo']" in str(error)
    _, _, error = train(tmp_path, "demo", "--resume", "abc", "--param", "count=1")
    assert isinstance(error, ValidationError) and "drop --param" in str(error)
    _, _, error = train(tmp_path, "demo", "--resume", "abc")
    assert isinstance(error, NotFoundError) and "No pipeline run 'abc' to resume" in str(error)
