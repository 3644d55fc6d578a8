"""Parallel trials: a grid of parameters in a process pool, each trial a child run of the pipeline's run."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from loopml.errors import ValidationError
from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import MetadataStore
from loopml.training import Pipeline, Tracker, grid, run_pipeline, run_trials, step
from loopml.training.tables import run_metrics, run_params, runs

_fresh = itertools.count()

# A project file, loaded under a name of its own as `loopml train` loads them: workers must still find it.
OBJECTIVE = """
import os


def objective(depth, rate):
    if depth == 3:
        raise ValueError("depth 3 is not supported")
    return {"score": depth * rate, "pid": os.getpid()}
"""


def load_objective(directory: Path) -> Any:
    path = directory / "lm_trial_objective.py"
    path.write_text(textwrap.dedent(OBJECTIVE))
    spec = importlib.util.spec_from_file_location(f"lm_trial_objective_{next(_fresh)}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.objective


def test_grid_gives_every_combination_in_order() -> None:
    assert grid(a=[1, 2], b=["x", "y"]) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]
    with pytest.raises(ValidationError, match=r"grid\(a=\.\.\.\) needs a non-empty list"):
        grid(a="abc")
    with pytest.raises(ValidationError, match="non-empty list"):
        grid(a=[])


def test_an_objective_must_be_a_module_level_function() -> None:
    with pytest.raises(ValidationError, match="module-level function"):
        run_trials(lambda depth: {"score": depth}, [{"depth": 1}])
    with pytest.raises(ValidationError, match="each trial is a dict"):
        run_trials(load_objective, [[1, 2]])  # type: ignore[list-item]
    assert run_trials(load_objective, []) == []


def test_trials_run_in_a_pool_as_child_runs_of_the_pipeline(
    tmp_path: Path, metadata: MetadataStore, capsys: pytest.CaptureFixture[str]
) -> None:
    objective = load_objective(tmp_path)

    @step
    def search(depths: list = [1, 2, 3], rates: list = [0.5]) -> dict:  # noqa: B006 - a recorded default
        results = run_trials(objective, grid(depth=depths, rate=rates), processes=2)
        return {
            "scores": [r.metrics["score"] if r.ok else None for r in results],
            "errors": [r.error for r in results],
            "pids": sorted({r.metrics["pid"] for r in results if r.ok}),
            "run_ids": [r.run_id for r in results],
        }

    run = run_pipeline(
        Pipeline("search", [search]),
        metadata=metadata,
        artifacts=ArtifactStore(str(tmp_path / "artifacts")),
        code_dir=tmp_path,
        progress=True,
    )
    assert "3/3 trials, 1 failed" in capsys.readouterr().out  # a line under the pipeline's step lines
    found = run.output("search")
    assert run.status == "succeeded"  # one failed trial does not fail the search
    assert found["scores"] == [0.5, 1.0, None]  # in trial order
    assert found["errors"][:2] == [None, None]
    assert found["errors"][2] == "ValueError: depth 3 is not supported"
    assert all(pid != __import__("os").getpid() for pid in found["pids"])  # not in this process

    with metadata.begin() as conn:
        children = conn.execute(
            select(runs.c.id, runs.c.name, runs.c.status, runs.c.error, runs.c.pipeline)
            .where(runs.c.parent_run_id == run.run_id)
            .order_by(runs.c.name)
        ).all()
        params = conn.execute(select(run_params.c.run_id, run_params.c.key, run_params.c.value)).all()
        metrics = conn.execute(select(run_metrics.c.run_id, run_metrics.c.key, run_metrics.c.value)).all()
    assert [c.id for c in children] == sorted(found["run_ids"], key=found["run_ids"].index)
    assert [(c.name, c.status, c.pipeline) for c in children] == [
        ("trial-0", "finished", "search"),
        ("trial-1", "finished", "search"),
        ("trial-2", "failed", "search"),
    ]
    assert "depth 3 is not supported" in children[2].error
    by_run = {c.id: c.name for c in children}
    assert {(by_run[r], k, v) for r, k, v in params if r in by_run} >= {
        ("trial-0", "depth", "1"),
        ("trial-2", "depth", "3"),
    }
    assert {(by_run[r], k, v) for r, k, v in metrics if r in by_run and k == "score"} == {
        ("trial-0", "score", 0.5),
        ("trial-1", "score", 1.0),
    }


def test_outside_a_pipeline_trials_are_recorded_when_given_a_tracker(
    tmp_path: Path, metadata: MetadataStore
) -> None:
    objective = load_objective(tmp_path)
    tracker = Tracker(metadata)
    results = run_trials(objective, [{"depth": 2, "rate": 2.0}], processes=1, tracker=tracker, pipeline="hp")
    assert results[0].metrics is not None and results[0].metrics["score"] == 4.0
    assert tracker.get_run(results[0].run_id or "").status == "finished"
    assert run_trials(objective, [{"depth": 1, "rate": 1.0}], processes=1)[0].run_id is None
