"""`loopml runs`: list with a filter and order, show, compare, delete; unknown ids and bad filters explained."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from loopml.cli.runs import app
from loopml.project import Project
from loopml.training.tracking import Tracker

runner = CliRunner()


@pytest.fixture
def runs(project: Project) -> dict[str, str]:
    tracker = Tracker(project.metadata, project.artifacts)
    ids = {}
    for name, model, auc in (("first", "gbm", 0.81), ("second", "gbm", 0.92), ("third", "logreg", 0.70)):
        ids[name] = tracker.start_run(
            "churn", {"model": model, "depth": 3}, {}, name=name, tags={"team": "risk"}
        )
        for step in range(5):
            tracker.log_metric(ids[name], "auc", auc - 0.01 * (4 - step), step=step)
        tracker.log_metric(ids[name], "loss", 1 - auc)
        tracker.end_run(ids[name])
    tracker.log_artifact(ids["second"], "report.txt", b"all good")
    tracker.close()
    return ids


def invoke(project: Project, *args: str, input: str | None = None):
    return runner.invoke(app, [*args, "-p", str(project.path)], input=input)


def test_list_filters_orders_and_shows_the_named_metrics(project: Project, runs: dict[str, str]) -> None:
    result = invoke(project, "list", "--filter", "params.model = 'gbm'", "--order-by", "metrics.auc DESC")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "params.model" in lines[1] and "auc" in lines[1]
    rows = [line for line in lines if runs["first"][:8] in line or runs["second"][:8] in line]
    assert [("second" in row, "0.92" in row) for row in rows] == [(True, True), (False, False)]
    assert "third" not in result.output
    assert "No runs match." in invoke(project, "list", "--filter", "metrics.auc > 5").output
    assert "first 1 shown" in invoke(project, "list", "--max", "1").output


def test_a_bad_filter_is_explained(project: Project, runs: dict[str, str]) -> None:
    result = invoke(project, "list", "--filter", "metrics.auc >> 1")
    assert result.exit_code == 1
    assert "Cannot parse filter at position 13" in result.output


def test_show_prints_params_metric_counts_tags_environment_and_artifacts(
    project: Project, runs: dict[str, str]
) -> None:
    result = invoke(project, "show", runs["second"][:6])
    assert result.exit_code == 0, result.output
    out = result.output
    assert runs["second"] in out and "second" in out and "finished" in out
    assert "model" in out and "gbm" in out and "team" in out and "risk" in out
    auc_row = next(line for line in out.splitlines() if "auc" in line)
    assert "0.92" in auc_row and auc_row.rstrip(" │").endswith("5")  # five values logged
    assert "python" in out and "packages" in out and "numpy" in out
    assert "report.txt" in out and "8" in out


def test_unknown_ids_are_explained(project: Project, runs: dict[str, str]) -> None:
    for command in (
        ["show", "nope-nope"],
        ["delete", "nope-nope", "--yes"],
        ["compare", "nope-nope", runs["first"]],
    ):
        result = invoke(project, *command)
        assert result.exit_code == 1
        assert "No run with id 'nope-nope'" in result.output


def test_compare_highlights_what_differs(project: Project, runs: dict[str, str]) -> None:
    result = invoke(project, "compare", runs["first"], runs["third"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") >= 4}
    assert "≠" in rows["params.model"] and "≠" in rows["metrics.auc"]
    assert "≠" not in rows["params.depth"]
    assert invoke(project, "compare", runs["first"]).exit_code == 1


def test_delete_asks_first_and_refuses_a_run_with_children_unless_recursive(
    project: Project, runs: dict[str, str]
) -> None:
    tracker = Tracker(project.metadata, capture_environment=False)
    child = tracker.start_run("churn", {}, {}, parent_run_id=runs["first"])
    tracker.close()
    kept = invoke(project, "delete", runs["second"], input="n\n")
    assert kept.exit_code == 1 and "Nothing deleted" in kept.output and "1 stored blob(s)" in kept.output
    refused = invoke(project, "delete", runs["first"], "--yes")
    assert refused.exit_code == 1 and "has 1 child run" in refused.output
    deleted = invoke(project, "delete", runs["first"], "--recursive", "--yes")
    assert deleted.exit_code == 0 and "Deleted 2 run(s)" in deleted.output
    remaining = invoke(project, "list").output
    assert (
        runs["first"][:8] not in remaining and child[:8] not in remaining and runs["second"][:8] in remaining
    )
    assert "Deleted 1 run(s) and 1 blob(s)" in invoke(project, "delete", runs["second"], input="y\n").output


def test_list_without_runs(tmp_path: Path, project: Project) -> None:
    assert "No runs yet" in invoke(project, "list").output
