"""Running pipelines: caching by code, params and inputs; failures and resume; records; step outputs."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sqlalchemy import select

from loopml.clock import SimulatedClock
from loopml.errors import NotFoundError, ValidationError
from loopml.storage.artifact_refs import artifact_refs
from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import MetadataStore
from loopml.training import (
    Pipeline,
    PipelineRun,
    StepFailedError,
    Tracker,
    delete_pipeline_run,
    get_pipeline_run,
    list_pipeline_runs,
    log_metric,
    run_pipeline,
    step,
)
from loopml.training.step_artifacts import load_output, save_output
from loopml.training.tables import pipeline_runs, runs, step_runs

_fresh = itertools.count()

HELPERS = """
SCALE = 2


def clean(values):
    return [v for v in values if v is not None]


def scale(values):
    return [v * SCALE for v in values]


def unrelated():
    return 1
"""

PIPE = """
from pathlib import Path

import lm_run_helpers
from lm_run_helpers import scale

from loopml.training import Pipeline, log_metric, step

LOG = Path(__file__).with_name("executed.log")


def ran(name):
    with LOG.open("a") as handle:
        handle.write(name + "\\n")


@step(cache=CACHE_RAW)
def raw(n=5):
    ran("raw")
    return [None, *range(n)]


@step
def cleaned(raw):
    ran("cleaned")
    return lm_run_helpers.clean(raw)


@step
def scaled(cleaned, factor=1.0):
    ran("scaled")
    FAILURE
    return [x * factor for x in scale(cleaned)]


@step
def total(scaled):
    ran("total")
    log_metric("total", sum(scaled))
    return sum(scaled)


pipeline = Pipeline("numbers", steps=[raw, cleaned, scaled, total])
"""


class Workspace:
    """A project directory with the pipeline's files, re-imported afresh after every edit."""

    def __init__(self, root: Path, metadata: MetadataStore, artifacts: ArtifactStore) -> None:
        self.root, self.metadata, self.artifacts = root, metadata, artifacts
        self.helpers, self.pipe = HELPERS, PIPE

    def load(self, *, failing: bool = False, cache_raw: bool = True) -> Pipeline:
        pipe = self.pipe.replace("CACHE_RAW", str(cache_raw))
        pipe = pipe.replace("FAILURE", 'raise RuntimeError("boom")' if failing else "pass")
        (self.root / "lm_run_helpers.py").write_text(textwrap.dedent(self.helpers))
        (self.root / "lm_run_pipe.py").write_text(textwrap.dedent(pipe))
        sys.modules.pop("lm_run_helpers", None)
        spec = importlib.util.spec_from_file_location(
            f"lm_run_pipe_{next(_fresh)}", self.root / "lm_run_pipe.py"
        )
        assert spec is not None and spec.loader is not None
        module: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.pipeline

    def run(self, pipeline: Pipeline | None = None, **kwargs: Any) -> PipelineRun:
        (self.root / "executed.log").unlink(missing_ok=True)
        return run_pipeline(
            pipeline or self.load(),
            metadata=self.metadata,
            artifacts=self.artifacts,
            code_dir=self.root,
            **kwargs,
        )

    def executed(self) -> list[str]:
        log = self.root / "executed.log"
        return log.read_text().split() if log.exists() else []

    def step_rows(self, pipeline_run_id: str) -> dict[str, Any]:
        with self.metadata.begin() as conn:
            rows = conn.execute(select(step_runs).where(step_runs.c.pipeline_run_id == pipeline_run_id)).all()
        return {r.step: r for r in rows}


@pytest.fixture
def work(tmp_path: Path, metadata: MetadataStore) -> Iterator[Workspace]:
    root = tmp_path / "project"
    root.mkdir()
    sys.path.insert(0, str(root))
    yield Workspace(root, metadata, ArtifactStore(str(tmp_path / "artifacts")))
    sys.path.remove(str(root))
    sys.modules.pop("lm_run_helpers", None)


def test_a_first_run_executes_every_step_and_records_it(work: Workspace) -> None:
    run = work.run()
    assert work.executed() == ["raw", "cleaned", "scaled", "total"]
    assert run.status == "succeeded" and run.executed == ("raw", "cleaned", "scaled", "total")
    assert run.output("total") == 20.0  # (0+1+2+3+4) * 2 * 1.0
    assert run.output("cleaned") == [0, 1, 2, 3, 4]
    assert run.params == {"n": 5, "factor": 1.0}
    rows = work.step_rows(run.id)
    assert {name: r.status for name, r in rows.items()} == dict.fromkeys(rows, "succeeded")
    assert rows["total"].outputs["total"]["format"] == "json"
    assert all(len(r.cache_key) == 64 and r.cached_from is None for r in rows.values())
    with work.metadata.begin() as conn:
        refs = dict(
            conn.execute(
                select(artifact_refs.c.path, artifact_refs.c.digest).where(
                    artifact_refs.c.owner == f"pipeline_run:{run.id}"
                )
            ).all()
        )
        pipeline_row = conn.execute(select(pipeline_runs).where(pipeline_runs.c.id == run.id)).one()
    assert refs == {f"{s}/{s}": rows[s].outputs[s]["digest"] for s in rows}
    assert pipeline_row.status == "succeeded" and pipeline_row.run_id == run.run_id
    tracked = Tracker(work.metadata).get_run(run.run_id)
    assert tracked.status == "finished" and tracked.pipeline == "numbers"
    assert tracked.params == {"n": "5", "factor": "1.0"}
    assert tracked.metrics["total"] == 20.0  # logged from inside the step


def test_nothing_changed_skips_every_step(work: Workspace) -> None:
    first = work.run()
    second = work.run()
    assert work.executed() == []
    assert second.id != first.id and second.executed == ()
    assert second.statuses == dict.fromkeys(["raw", "cleaned", "scaled", "total"], "cached")
    assert {r.cached_from for r in second.steps.values()} == {first.id}
    assert second.output("total") == first.output("total")
    assert {r.cache_key for r in second.steps.values()} == {r.cache_key for r in first.steps.values()}


def test_a_helper_change_reruns_its_callers_and_unchanged_outputs_stop_there(work: Workspace) -> None:
    work.run()
    # clean() changes but gives the same output here: cleaned re-runs, scaled and total stay cached
    work.helpers = HELPERS.replace("if v is not None]", "if v is not None and v >= 0]")
    run = work.run()
    assert work.executed() == ["cleaned"]
    assert run.statuses == {"raw": "cached", "cleaned": "succeeded", "scaled": "cached", "total": "cached"}
    # a constant read by scale() changes its output: scaled and everything downstream re-run
    work.helpers = work.helpers.replace("SCALE = 2", "SCALE = 3")
    run = work.run()
    assert work.executed() == ["scaled", "total"]
    assert run.output("total") == 30.0
    # an unrelated helper changes nothing
    work.helpers = work.helpers.replace("return 1", "return 2")
    work.run()
    assert work.executed() == []


def test_a_parameter_change_reruns_the_steps_that_take_it(work: Workspace) -> None:
    work.run()
    run = work.run(params={"factor": 2})
    assert work.executed() == ["scaled", "total"]
    assert run.params["factor"] == 2.0 and run.output("total") == 40.0
    run = work.run(params={"n": 2})
    assert work.executed() == ["raw", "cleaned", "scaled", "total"]
    assert work.run(params={"factor": 2}).executed == ()  # the first variant is still cached
    with pytest.raises(ValidationError, match=r"no parameter 'fctor'; its parameters are \['factor', 'n'\]"):
        work.run(params={"fctor": 2})


def test_a_failed_run_resumes_from_the_failed_step_under_the_same_id(work: Workspace) -> None:
    with pytest.raises(
        StepFailedError, match=r"Step 'scaled' of pipeline 'numbers' failed: RuntimeError: boom"
    ) as info:
        work.run(work.load(failing=True, cache_raw=False))
    failed_id = info.value.pipeline_run_id
    assert info.value.step == "scaled" and f"--resume {failed_id}" in str(info.value)
    failed = get_pipeline_run(work.metadata, failed_id)
    assert failed.status == "failed" and "RuntimeError: boom" in (failed.error or "")
    assert failed.statuses == {"raw": "succeeded", "cleaned": "succeeded", "scaled": "failed"}
    assert "RuntimeError: boom" in (failed.steps["scaled"].error or "")
    assert Tracker(work.metadata).get_run(failed.run_id or "").status == "failed"

    resumed = work.run(work.load(cache_raw=False), resume=failed_id)
    assert work.executed() == ["scaled", "total"]  # raw is not cacheable, yet resume keeps it
    assert resumed.id == failed_id and resumed.run_id == failed.run_id
    assert resumed.status == "succeeded" and resumed.error is None
    assert resumed.statuses == dict.fromkeys(["raw", "cleaned", "scaled", "total"], "succeeded")
    assert resumed.output("total") == 20.0
    assert Tracker(work.metadata).get_run(resumed.run_id or "").status == "finished"
    with work.metadata.begin() as conn:
        paths = set(
            conn.execute(
                select(artifact_refs.c.path).where(artifact_refs.c.owner == f"pipeline_run:{failed_id}")
            ).scalars()
        )
    assert paths == {"raw/raw", "cleaned/cleaned", "scaled/scaled", "total/total"}

    with pytest.raises(ValidationError, match="succeeded; there is nothing to resume"):
        work.run(resume=failed_id)
    with pytest.raises(NotFoundError, match="No pipeline run 'nope' to resume"):
        work.run(resume="nope")
    assert work.run(work.load(cache_raw=False)).executed == ("raw",)  # a new run: raw is never cached


def test_resume_reruns_a_kept_step_whose_code_changed_and_refuses_other_params(work: Workspace) -> None:
    with pytest.raises(StepFailedError) as info:
        work.run(work.load(failing=True))
    failed_id = info.value.pipeline_run_id
    with pytest.raises(ValidationError, match="reuses its parameters"):
        work.run(resume=failed_id, params={"factor": 3.0})
    work.helpers = HELPERS.replace("if v is not None]", "if v is not None and v > 0]")
    resumed = work.run(resume=failed_id, params={"factor": 1.0})  # agreeing params are fine
    assert work.executed() == ["cleaned", "scaled", "total"]
    assert resumed.output("total") == 20.0


def test_progress_shows_a_line_per_step(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    work.run(progress=True)
    work.run(progress=True)
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [line[1:3] for line in lines] == [
        *([name, "done"] for name in ["raw", "cleaned", "scaled", "total"]),
        *([name, "cached"] for name in ["raw", "cleaned", "scaled", "total"]),
    ]


def test_a_step_output_that_was_deleted_is_computed_again(work: Workspace) -> None:
    first = work.run()
    work.artifacts.delete(first.stored("scaled").digest)
    second = work.run()
    assert work.executed() == ["scaled"]  # same output again, so total stays cached
    assert second.output("scaled") == first.output("scaled")


def test_deleting_runs_keeps_outputs_a_later_run_uses(work: Workspace, clock: SimulatedClock) -> None:
    first = work.run()
    clock.advance(timedelta(minutes=1))
    second = work.run()
    assert [r.id for r in list_pipeline_runs(work.metadata, "numbers")] == [second.id, first.id]
    assert list_pipeline_runs(work.metadata, "other") == []
    assert delete_pipeline_run(work.metadata, work.artifacts, first.id) == []  # the second run holds them
    assert get_pipeline_run(work.metadata, second.id, artifacts=work.artifacts).output("total") == 20.0
    with pytest.raises(NotFoundError):
        get_pipeline_run(work.metadata, first.id)
    deleted = delete_pipeline_run(work.metadata, work.artifacts, second.id)
    assert sorted(deleted) == sorted({o.digest for r in second.steps.values() for o in r.outputs.values()})
    assert not any(work.artifacts.exists(d) for d in deleted)
    with work.metadata.begin() as conn:
        assert conn.execute(select(step_runs)).all() == []
        assert len(conn.execute(select(runs)).all()) == 2  # tracked runs stay
    assert work.run().executed == ("raw", "cleaned", "scaled", "total")
    with pytest.raises(NotFoundError):
        delete_pipeline_run(work.metadata, work.artifacts, "nope")


@step(outputs=("train", "test"))
def frames(rows: int = 6) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = pd.DataFrame({"x": range(rows), "y": [0, 1] * (rows // 2)})
    return frame.iloc[: rows // 2], frame.iloc[rows // 2 :]


@step
def fitted(train: pd.DataFrame, test: pd.DataFrame, project: Any) -> LogisticRegression:
    project.append("fitted")
    log_metric("train_rows", len(train))
    return LogisticRegression().fit(train[["x"]], train["y"])


def counted(train: pd.DataFrame, project: Any) -> int:
    project.append("fit")
    return len(train)


def test_several_outputs_objects_and_injected_resources(tmp_path: Path, metadata: MetadataStore) -> None:
    pipeline = Pipeline("model", [frames, fitted])
    store = ArtifactStore(str(tmp_path / "artifacts"))
    calls: list[str] = []
    with pytest.raises(ValidationError, match="takes 'project', a resource the runner injects"):
        run_pipeline(pipeline, metadata=metadata, artifacts=store, code_dir=tmp_path)
    run = run_pipeline(
        pipeline, metadata=metadata, artifacts=store, code_dir=tmp_path, context={"project": calls}
    )
    assert run.stored("train").format == "parquet" and run.stored("fitted").format == "joblib"
    pd.testing.assert_frame_equal(run.output("test"), frames(6)[1])
    assert list(run.output("fitted").predict(pd.DataFrame({"x": [0]}))) in ([0], [1])
    assert Tracker(metadata).get_run(run.run_id or "").metrics["train_rows"] == 3
    # the cache key cannot see a resource's data: a step taking one runs every time unless declared cached
    again = run_pipeline(
        pipeline, metadata=metadata, artifacts=store, code_dir=tmp_path, context={"project": calls}
    )
    assert again.statuses == {"frames": "cached", "fitted": "succeeded"} and calls == ["fitted", "fitted"]
    declared = Pipeline("model", [frames, step(cache=True)(counted)])
    for _ in range(2):
        last = run_pipeline(
            declared, metadata=metadata, artifacts=store, code_dir=tmp_path, context={"project": calls}
        )
    assert last.statuses == {"frames": "cached", "counted": "cached"} and calls.count("fit") == 1


def test_log_metric_outside_a_step_is_refused() -> None:
    with pytest.raises(ValidationError, match="outside a running pipeline step"):
        log_metric("x", 1.0)


@pytest.mark.parametrize(
    ("value", "expected_format"),
    [
        (pd.DataFrame({"a": [1, 2], "b": ["x", None]}, index=[10, 20]), "parquet"),
        (pd.DataFrame({0: [1.5], 1: [2.5]}), "joblib"),  # parquet needs string column names
        (np.arange(6, dtype=np.float32).reshape(2, 3), "npy"),
        (np.array([{"a": 1}, None], dtype=object), "joblib"),
        ({"a": [1, 2.5, None, True], "b": {"c": "d"}}, "json"),
        ([1, "two", 3.0], "json"),
        ("text", "json"),
        (None, "json"),
        ((1, 2), "joblib"),  # JSON would give a list back
        ({1: "int key"}, "joblib"),
        (np.float64(1.5), "joblib"),
    ],
)
def test_outputs_round_trip_in_their_format(tmp_path: Path, value: Any, expected_format: str) -> None:
    store = ArtifactStore(str(tmp_path))
    stored = save_output(store, value)
    assert stored.format == expected_format
    assert save_output(store, value) == stored  # equal values, equal bytes: downstream caches hold
    back = load_output(store, stored)
    if isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(back, value)
    elif isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and back.tolist() == value.tolist()
    else:
        assert back == value and type(back) is type(value)


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    from loopml.training.step_artifacts import StoredOutput

    store = ArtifactStore(str(tmp_path))
    digest = store.put(b"x")
    with pytest.raises(ValidationError, match="Unknown step output format 'pickle'"):
        load_output(store, StoredOutput(digest, "pickle", 1))


def test_pipeline_runs_are_listed_by_pipeline(tmp_path: Path, metadata: MetadataStore) -> None:
    @step
    def one() -> int:
        return 1

    store = ArtifactStore(str(tmp_path / "a"))
    run = run_pipeline(Pipeline("single", [one]), metadata=metadata, artifacts=store, code_dir=tmp_path)
    listed = list_pipeline_runs(metadata)
    assert [r.id for r in listed] == [run.id] and listed[0].statuses == {"one": "succeeded"}
    with pytest.raises(ValidationError, match="read without an artifact store"):
        listed[0].output("one")
    with pytest.raises(NotFoundError, match=r"has no output 'two'; its outputs are \['one'\]"):
        run.output("two")
