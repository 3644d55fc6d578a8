"""`loopml rollout start/status/pause/resume/promote/abort`."""

from __future__ import annotations

from typer.testing import CliRunner

from loopml.cli.main import app
from loopml.project import Project

runner = CliRunner()


def invoke(project: Project, *args: str) -> str:
    result = runner.invoke(app, ["rollout", *args, "-p", str(project.path)])
    assert result.exit_code == 0, f"{result.output}{result.exception!r}"
    return result.output


def test_an_operator_drives_a_rollout_from_the_command_line(candidate: Project) -> None:
    assert "No rollouts" in invoke(candidate, "status")
    started = invoke(
        candidate, "start", "toy", "--version", "2", "--steps", "10,50,100", "--reason", "new data"
    )
    assert "rollout 1 of toy/2 on 'toy': running, canary step 1 of 2 (10%)" in started
    table = invoke(candidate, "status", "toy")
    assert "toy/2" in table and "toy/1" in table and "10%" in table and "running" in table
    assert "paused" in invoke(candidate, "pause", "toy", "--reason", "incident")
    assert "running" in invoke(candidate, "resume", "toy")
    assert "promoted" in invoke(candidate, "promote", "toy")
    assert candidate.registry.get_alias("toy", "champion") == 2
    invoke(candidate, "start", "toy", "--version", "1")
    assert "aborted" in invoke(candidate, "abort", "toy")
    assert "aborted" in invoke(candidate, "status")


def test_bad_steps_and_missing_rollouts_are_explained(candidate: Project) -> None:
    bad = runner.invoke(
        app, ["rollout", "start", "toy", "--version", "2", "--steps", "5,x", "-p", str(candidate.path)]
    )
    assert bad.exit_code == 1 and "comma-separated percentages" in str(bad.exception)
    missing = runner.invoke(app, ["rollout", "pause", "toy", "-p", str(candidate.path)])
    assert missing.exit_code == 1 and "no active rollout" in str(missing.exception)


def test_bandits_and_experiments_from_the_command_line(candidate: Project) -> None:
    def run(*args: str) -> str:
        result = runner.invoke(app, [*args, "-p", str(candidate.path)])
        assert result.exit_code == 0, f"{result.output}{result.exception!r}"
        return result.output

    assert "a: v1 50%, b: v2 50%" in run("bandit", "start", "toy", "--arm", "a=1", "--arm", "b=2")
    assert "50%" in run("bandit", "status", "toy")
    decision = run("experiment", "analyse", "toy", "--control", "a", "--treatment", "b", "--since", "30d")
    assert "continue" in decision and "planned" in decision
    assert "stopped" in run("bandit", "stop", "toy")
    bad = runner.invoke(
        app, ["bandit", "start", "toy", "--arm", "a", "--arm", "b=2", "-p", str(candidate.path)]
    )
    assert bad.exit_code == 1 and "NAME=VERSION" in str(bad.exception)


def test_events_filter_by_endpoint_model_and_time(candidate: Project) -> None:
    invoke(candidate, "start", "toy", "--version", "2")
    by_endpoint = runner.invoke(app, ["events", "--endpoint", "toy", "-p", str(candidate.path)])
    assert by_endpoint.exit_code == 0 and "rollout.started" in by_endpoint.output
    by_model = runner.invoke(app, ["events", "--model", "toy", "-p", str(candidate.path)])
    assert "rollout.started" not in by_model.output and "alias.moved" in by_model.output
    before = runner.invoke(
        app, ["events", "--endpoint", "toy", "--until", "2025-01-01", "-p", str(candidate.path)]
    )
    assert "rollout.started" not in before.output
    both = runner.invoke(app, ["events", "--endpoint", "toy", "--model", "toy", "-p", str(candidate.path)])
    assert both.exit_code == 1 and "one of --subject" in str(both.exception)
