"""`loopml deploy` with canary, shadow and experiment routes, and `loopml endpoints list/show/config/delete`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from loopml.cli.endpoints import parse_model_ref
from loopml.cli.main import app
from loopml.errors import ValidationError
from loopml.project import Project
from loopml.serving.endpoints import get_endpoint
from tests.helpers import SPEC, build_world

runner = CliRunner()


@pytest.fixture
def project_with_two_versions(project: Project) -> Project:
    events = build_world(project, n_users=10, days=3, per_day=30)
    for seed in (0, 1):
        project.registry.register(project.train(SPEC, events.sample(frac=0.9, random_state=seed)))
    project.registry.set_alias("toy", "champion", 1, reason="test")
    project.registry.set_alias("toy", "challenger", 2, reason="test")
    return project


def run(project: Project, *args: str) -> str:
    result = runner.invoke(app, [*args, "--project", str(project.path)])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_deploy_sets_routes_and_endpoints_shows_them(project_with_two_versions) -> None:
    project = project_with_two_versions
    assert "primary toy@champion (primary, 100%)" in run(
        project, "deploy", "fraud", "--model", "toy@champion"
    )
    assert "canary toy@challenger (canary, 5%)" in run(
        project, "deploy", "fraud", "--model", "toy@challenger", "--canary", "5"
    )
    run(project, "deploy", "fraud", "--model", "toy/1", "--shadow", "50")
    run(project, "deploy", "fraud", "--model", "toy@challenger", "--arm", "b", "--weight", "10")
    routes = {r.name: (r.mode, r.target, r.weight) for r in get_endpoint(project.metadata, "fraud").routes}
    assert routes == {
        "primary": ("primary", "toy@champion", 100.0),
        "canary": ("canary", "toy@challenger", 5.0),
        "shadow": ("shadow", "toy/1", 50.0),
        "b": ("experiment", "toy@challenger", 10.0),
    }
    listed = run(project, "endpoints", "list")
    assert "fraud" in listed and "toy@challenger" in listed and "v2" in listed and "5%" in listed
    shown = run(project, "endpoints", "show", "fraud")
    assert "canary toy@challenger (canary, 5%): toy/2" in shown
    configured = run(
        project, "endpoints", "config", "fraud", "--cache-max-age", "600", "--max-batch-size", "16"
    )
    assert "cache_max_age_seconds=600" in configured and "max_batch_size=16" in configured
    assert get_endpoint(project.metadata, "fraud").settings.max_batch_size == 16
    run(project, "deploy", "fraud", "--model", "toy@challenger", "--canary", "0")
    assert "canary" not in {r.name for r in get_endpoint(project.metadata, "fraud").routes}
    run(project, "endpoints", "delete", "fraud", "--yes")
    assert "fraud" not in run(project, "endpoints", "list")


def test_contradictory_options_are_refused(project_with_two_versions) -> None:
    project = project_with_two_versions
    run(project, "deploy", "fraud", "--model", "toy")
    result = runner.invoke(
        app,
        [
            "deploy",
            "fraud",
            "--model",
            "toy@challenger",
            "--canary",
            "5",
            "--shadow",
            "5",
            "--project",
            str(project.path),
        ],
    )
    assert isinstance(result.exception, ValidationError) and "at most one of" in str(result.exception)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("m@champion", ("m", "champion", None)), ("m/3", ("m", None, 3)), ("m", ("m", "champion", None))],
)
def test_model_references(text, parsed) -> None:
    assert parse_model_ref(text) == parsed


def test_a_bad_model_reference_is_refused() -> None:
    with pytest.raises(ValidationError, match="NAME@ALIAS, NAME/VERSION or NAME"):
        parse_model_ref("m/latest")
