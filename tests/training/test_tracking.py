"""Tracking: logging that never waits for the database, latest values, errors that surface, the environment,
artifacts and datasets, and deleting runs without orphans (SQLite and PostgreSQL)."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, insert, select, text

from loopml.clock import SimulatedClock
from loopml.data.snapshots import save_snapshot
from loopml.errors import NotFoundError, ValidationError
from loopml.project import Project
from loopml.storage.artifact_refs import StoredFile, add_refs, artifact_refs
from loopml.storage.metadata import MetadataStore
from loopml.training.tables import (
    pipeline_runs,
    run_latest_metrics,
    run_metrics,
    run_params,
    run_tags,
    runs,
    step_runs,
)
from loopml.training.tracking import Tracker


@pytest.fixture
def tracker(metadata: MetadataStore) -> Iterator[Tracker]:
    tracker = Tracker(metadata, capture_environment=False, batch_size=100, flush_seconds=0.05)
    yield tracker
    tracker.close()


def count(metadata: MetadataStore, table, run_id: str | None = None) -> int:
    query = select(func.count()).select_from(table)
    if run_id is not None:
        query = query.where(table.c.run_id == run_id)
    with metadata.begin() as conn:
        return int(conn.execute(query).scalar())


@contextmanager
def writes_held(metadata: MetadataStore) -> Iterator[None]:
    """Another connection holds the write lock: the tracker's writer waits, readers still read."""
    if metadata.engine.dialect.name == "sqlite":
        conn = sqlite3.connect(metadata.engine.url.database, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    with metadata.engine.connect() as conn:
        transaction = conn.begin()
        for table in ("run_metrics", "run_latest_metrics", "run_params", "run_tags"):
            conn.execute(text(f"LOCK TABLE {table} IN EXCLUSIVE MODE"))
        try:
            yield
        finally:
            transaction.rollback()


# ---------------------------------------------------------------------------------------------- logging


def test_logging_returns_before_the_values_are_written_and_flush_writes_them(
    metadata: MetadataStore, tracker: Tracker
) -> None:
    run_id = tracker.start_run("p", {}, {})
    with writes_held(metadata):
        for step in range(10):
            tracker.log_metrics(run_id, {f"m{k}": step * 10 + k for k in range(100)}, step=step)
        tracker.log_params(run_id, {"lr": 0.1})
        tracker.set_tag(run_id, "team", "risk")
        # every call returned while the database refused writes: nothing is stored yet
        assert count(metadata, run_metrics, run_id) == 0
        assert count(metadata, run_params, run_id) == 0
    tracker.flush()
    assert count(metadata, run_metrics, run_id) == 1000
    run = tracker.get_run(run_id)
    assert run.metrics == {f"m{k}": 90.0 + k for k in range(100)}
    assert run.params == {"lr": "0.1"} and run.tags == {"team": "risk"}


def test_a_full_queue_makes_the_caller_wait_and_loses_nothing(metadata: MetadataStore) -> None:
    tracker = Tracker(metadata, capture_environment=False, batch_size=5, max_queue=10, flush_seconds=0.01)
    run_id = tracker.start_run("p", {}, {})
    done = threading.Event()

    def train() -> None:
        for step in range(50):
            tracker.log_metric(run_id, "loss", 1 / (step + 1), step=step)
        done.set()

    with writes_held(metadata):
        trainer = threading.Thread(target=train)
        trainer.start()
        # The writer cannot write, so after 10 queued values (plus the batch it holds) the trainer waits.
        assert not done.wait(0.5)
    trainer.join(60)
    assert done.is_set()
    tracker.close()
    assert [p.step for p in tracker.metric_history(run_id, "loss")] == list(range(50))


def test_thousands_of_metrics_keep_their_history_and_the_highest_step_is_latest(
    metadata: MetadataStore, tracker: Tracker, clock: SimulatedClock
) -> None:
    run_id = tracker.start_run("p", {}, {})
    for step in range(300):
        for key in ("loss", "acc", "lr", "grad"):
            tracker.log_metric(run_id, key, step / 1000, step=step)
    tracker.log_metric(run_id, "loss", 99.0, step=5)  # an old step logged late does not become latest
    tracker.log_metric(run_id, "acc", 0.5, step=299)  # the same step again: the later value wins
    clock.advance(timedelta(seconds=1))
    tracker.log_metric(run_id, "acc", 0.75, step=299)
    tracker.log_metric(run_id, "lr", 0.01, step=299, timestamp=clock.now() - timedelta(days=1))  # older
    tracker.flush()
    assert count(metadata, run_metrics, run_id) == 1204
    run = tracker.get_run(run_id)
    assert run.metrics == {"loss": 0.299, "acc": 0.75, "lr": 0.299, "grad": 0.299}
    with metadata.begin() as conn:
        latest = conn.execute(
            select(run_latest_metrics.c.step).where(run_latest_metrics.c.key == "loss")
        ).scalar()
    assert latest == 299
    history = tracker.metric_history(run_id, "acc")
    assert len(history) == 302 and history[-1].value == 0.75 and history[-1].step == 299
    assert tracker.metric_history(run_id, "never-logged") == []


def test_end_run_writes_what_is_queued_before_setting_the_status(
    metadata: MetadataStore, tracker: Tracker
) -> None:
    run_id = tracker.start_run("p", {"a": 1}, {}, name="first", tags={"team": "risk"})
    for step in range(250):
        tracker.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
    tracker.end_run(run_id)
    assert count(metadata, run_metrics, run_id) == 250  # read without the tracker's flush
    run = tracker.get_run(run_id)
    assert (run.status, run.name, run.tags, run.params) == ("finished", "first", {"team": "risk"}, {"a": "1"})
    with pytest.raises(ValidationError, match="status must be one of"):
        tracker.end_run(run_id, "done")


def test_write_errors_surface_on_the_next_call_and_are_reported_once(
    metadata: MetadataStore, tracker: Tracker
) -> None:
    kept = tracker.start_run("p", {}, {})
    doomed = tracker.start_run("p", {}, {})
    tracker.log_metric(doomed, "loss", 1.0)
    tracker.flush()
    with metadata.begin() as conn:  # another process deletes the run under the tracker's feet
        for table in (run_metrics, run_latest_metrics):
            conn.execute(table.delete().where(table.c.run_id == doomed))
        conn.execute(runs.delete().where(runs.c.id == doomed))
    tracker.log_metric(doomed, "loss", 0.5, step=1)
    tracker.log_metric(kept, "loss", 0.5, step=1)
    with pytest.raises(ValidationError, match=f"run '{doomed}' were refused.*Was the run deleted"):
        tracker.flush()
    tracker.flush()  # reported once
    assert tracker.get_run(kept).metrics == {"loss": 0.5}  # the other run's value in the same batch is kept


def test_params_are_immutable_and_bounded_tags_are_not_immutable(tracker: Tracker) -> None:
    run_id = tracker.start_run("p", {"lr": 0.1}, {})
    tracker.log_param(run_id, "lr", "0.1")  # the same value again is fine
    with pytest.raises(ValidationError, match=r"Param 'lr' .* is already '0.1'; it cannot change to '0.2'"):
        tracker.log_param(run_id, "lr", 0.2)
    with pytest.raises(ValidationError, match=r"2001 bytes long.*log_artifact"):
        tracker.log_param(run_id, "notes", "x" * 2001)
    with pytest.raises(ValidationError, match="limited to 2000 bytes"):
        tracker.set_tag(run_id, "notes", "é" * 1001)
    tracker.log_params(run_id, {"depth": 3, "layers": [1, 2]})
    tracker.set_tag(run_id, "stage", "draft")
    tracker.set_tag(run_id, "stage", "final")
    run = tracker.get_run(run_id)
    assert run.params == {"lr": "0.1", "depth": "3", "layers": "[1, 2]"} and run.tags == {"stage": "final"}
    other = Tracker(tracker.metadata, capture_environment=False)  # a tracker that did not start the run
    with pytest.raises(ValidationError, match="cannot change"):
        other.log_param(run_id, "depth", 4)
    other.close()


def test_keys_and_values_are_checked_before_they_are_queued(tracker: Tracker) -> None:
    run_id = tracker.start_run("p", {}, {})
    for key, message in (("", "non-empty"), ("x" * 251, "limit is 250"), (" loss", "white space")):
        with pytest.raises(ValidationError, match=message):
            tracker.log_metric(run_id, key, 1.0)
    with pytest.raises(ValidationError, match="must be a number"):
        tracker.log_metric(run_id, "loss", "high")
    with pytest.raises(NotFoundError, match="No run with id 'nope'"):
        tracker.log_metric("nope", "loss", 1.0)
    with pytest.raises(ValidationError, match="NaN"):
        tracker.log_metrics(run_id, {"ok": 1.0, "loss": math.nan})
    tracker.log_metrics(run_id, {"up": math.inf, "down": -math.inf}, step=1)
    tracker.flush()
    run = tracker.get_run(run_id)
    assert run.metrics == {"up": math.inf, "down": -math.inf}  # nothing of the refused call was queued
    assert [r.id for r in tracker.search_runs("metrics.up > 1e308")] == [run_id]


def test_close_stops_the_writer_and_logging_starts_it_again(tracker: Tracker) -> None:
    run_id = tracker.start_run("p", {}, {})
    tracker.log_metric(run_id, "a", 1.0)
    tracker.close()
    assert tracker._writer._thread is None
    tracker.log_metric(run_id, "b", 2.0)
    assert tracker.get_run(run_id).metrics == {"a": 1.0, "b": 2.0}


# ---------------------------------------------------------------------------------------- environment


def git(directory: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=directory,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_the_environment_is_captured_with_the_git_state(metadata: MetadataStore, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train.py").write_text("print('hi')\n")
    git(repo, "add", "train.py")
    git(repo, "commit", "-q", "-m", "first")
    commit = git(repo, "rev-parse", "HEAD")
    tracker = Tracker(metadata)
    clean = tracker.start_run("p", {}, {}, code_dir=repo)
    (repo / "train.py").write_text("print('changed')\n")
    dirty = tracker.start_run("p", {}, {}, code_dir=repo)
    outside = tracker.start_run("p", {}, {}, code_dir=tmp_path)

    environment = tracker.get_run(clean).environment
    assert environment["git"]["commit"] == commit and environment["git"]["dirty"] is False
    assert tracker.get_run(dirty).environment["git"] == {**environment["git"], "dirty": True}
    assert tracker.get_run(outside).environment["git"] is None
    assert {"numpy", "pandas", "sqlalchemy"} <= environment["packages"].keys()
    import numpy

    assert environment["packages"]["numpy"] == numpy.__version__
    assert environment["python"]["version"].count(".") == 2 and environment["platform"]["system"]
    tracker.close()


def test_datasets_used_are_listed_in_the_environment(any_project: Project) -> None:
    tracker = Tracker(any_project.metadata, capture_environment=False)
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    train = save_snapshot(any_project.metadata, any_project.offline, "train", frame)
    holdout = save_snapshot(any_project.metadata, any_project.offline, "holdout", frame.head(2))
    run_id = tracker.start_run("p", {}, {})
    tracker.set_dataset(run_id, train.id)
    tracker.log_dataset(run_id, holdout.id, context="evaluation")
    run = tracker.get_run(run_id)
    assert run.dataset_id == train.id
    assert [(d["name"], d["context"], d["n_rows"]) for d in run.environment["datasets"]] == [
        ("train", "training", 3),
        ("holdout", "evaluation", 2),
    ]
    with pytest.raises(NotFoundError, match="No dataset snapshot"):
        tracker.log_dataset(run_id, "missing")
    tracker.close()


# ------------------------------------------------------------------------------------------ artifacts


def test_artifacts_are_content_addressed_and_listed_in_the_run(any_project: Project, tmp_path: Path) -> None:
    tracker = Tracker(any_project.metadata, any_project.artifacts, capture_environment=False)
    run_id = tracker.start_run("p", {}, {})
    plots = tmp_path / "plots"
    (plots / "sub").mkdir(parents=True)
    (plots / "roc.png").write_bytes(b"roc")
    (plots / "sub" / "pr.png").write_bytes(b"pr")
    tracker.log_artifact(run_id, "report.txt", b"first")
    tracker.log_artifact(run_id, "plots", plots)
    first = tracker.get_run(run_id).artifacts["report.txt"]
    tracker.log_artifact(run_id, "report.txt", b"second")  # replaces: the old blob had no other user
    artifacts = tracker.get_run(run_id).artifacts
    assert sorted(artifacts) == ["plots/roc.png", "plots/sub/pr.png", "report.txt"]
    assert artifacts["report.txt"].size == 6 and not any_project.artifacts.exists(first.digest)
    assert tracker.load_artifact(run_id, "plots/sub/pr.png") == b"pr"
    for bad in ("/abs", "../up", "a/../../b", ""):
        with pytest.raises(ValidationError, match="must be relative"):
            tracker.log_artifact(run_id, bad, b"x")
    with pytest.raises(ValidationError, match=r"artifacts=project.artifacts"):
        Tracker(any_project.metadata).log_artifact(run_id, "x", b"x")
    tracker.close()


# ------------------------------------------------------------------------------------------- deletion


def test_deleting_a_run_removes_its_rows_and_only_the_blobs_nobody_else_uses(any_project: Project) -> None:
    metadata, store = any_project.metadata, any_project.artifacts
    tracker = Tracker(metadata, store, capture_environment=False)
    doomed = tracker.start_run("p", {"lr": 0.1}, {}, tags={"team": "risk"})
    kept = tracker.start_run("p", {}, {})
    for step in range(20):
        tracker.log_metric(doomed, "loss", 1 / (step + 1), step=step)
    tracker.log_artifact(doomed, "own.bin", b"only mine")
    tracker.log_artifact(doomed, "shared.bin", b"shared")
    tracker.log_artifact(kept, "same-content.bin", b"shared")
    own = tracker.get_run(doomed).artifacts["own.bin"].digest
    shared = tracker.get_run(doomed).artifacts["shared.bin"].digest
    step_blob = store.put(b"step output")
    with metadata.begin() as conn:  # a pipeline run of it with a step and a step output
        conn.execute(
            insert(pipeline_runs).values(
                id="pr-1",
                pipeline="p",
                status="finished",
                params={},
                run_id=doomed,
                started_at=metadata.clock.now(),
            )
        )
        conn.execute(
            insert(step_runs).values(
                pipeline_run_id="pr-1",
                step="fit",
                cache_key="k" * 64,
                status="finished",
                outputs={},
                started_at=metadata.clock.now(),
            )
        )
        add_refs(conn, "pipeline_run:pr-1", {"fit/model": StoredFile(step_blob, 11)}, metadata.clock.now())

    plan = tracker.plan_deletion(doomed)
    assert (plan.run_ids, plan.pipeline_run_ids, plan.artifact_paths) == ([doomed], ["pr-1"], 3)
    deleted = tracker.delete_run(doomed)
    assert sorted(deleted.blobs) == sorted([own, step_blob])
    for table in (run_params, run_metrics, run_latest_metrics, run_tags):
        assert count(metadata, table, doomed) == 0
    assert count(metadata, pipeline_runs) == 0 and count(metadata, step_runs) == 0
    with metadata.begin() as conn:
        owners = set(conn.execute(select(artifact_refs.c.owner)).scalars())
    assert owners == {f"run:{kept}"}
    assert not store.exists(own) and not store.exists(step_blob) and store.exists(shared)
    with pytest.raises(NotFoundError):
        tracker.get_run(doomed)
    assert metadata.events(kind="run.deleted")[-1].subject == f"run:{doomed}"
    tracker.close()


def test_a_run_with_children_is_deleted_only_recursively(any_project: Project) -> None:
    tracker = Tracker(any_project.metadata, any_project.artifacts, capture_environment=False)
    parent = tracker.start_run("sweep", {}, {})
    child = tracker.start_run("sweep", {}, {}, parent_run_id=parent)
    grandchild = tracker.start_run("sweep", {}, {}, parent_run_id=child)
    tracker.log_artifact(grandchild, "model.bin", b"deep")
    with pytest.raises(ValidationError, match=r"has 1 child run.*recursive=True"):
        tracker.delete_run(parent)
    with pytest.raises(NotFoundError, match="No parent run"):
        tracker.start_run("sweep", {}, {}, parent_run_id="missing")
    deleted = tracker.delete_run(parent, recursive=True)
    assert sorted(deleted.run_ids) == sorted([parent, child, grandchild]) and len(deleted.blobs) == 1
    assert count(any_project.metadata, runs) == 0
    tracker.close()


def test_a_run_a_model_version_was_registered_from_is_not_deleted(any_project: Project) -> None:
    from loopml.registry.model_file import ModelFile
    from loopml.registry.models import VersionRecord

    tracker = any_project.tracker(capture_environment=False)
    parent = tracker.start_run("p", {}, {})
    run_id = tracker.start_run("p", {}, {}, parent_run_id=parent)
    tracker.log_artifact(run_id, "model.bin", b"weights")
    any_project.registry.register_files(
        ModelFile(model_name="m", flavors={"sklearn": {"path": "model.joblib"}}),
        {"model.joblib": b"not really a model"},
        VersionRecord(run_id=run_id),
    )
    for target, recursive in ((run_id, False), (parent, True)):
        with pytest.raises(
            ValidationError, match=r"model version m/1 \(registered from run .*\) keep\(s\) it"
        ):
            tracker.delete_run(target, recursive=recursive)
    assert tracker.get_run(run_id).artifacts.keys() == {"model.bin"}  # nothing was deleted
    tracker.close()


def test_values_still_queued_at_exit_are_written(tmp_path: Path) -> None:
    import sys

    url = f"sqlite:///{tmp_path / 'exit.db'}"
    script = f"""
from loopml.clock import SystemClock
from loopml.schema import register_all_tables
from loopml.storage.metadata import MetadataStore
from loopml.training.tracking import Tracker

register_all_tables()
metadata = MetadataStore({url!r}, SystemClock())
metadata.migrate()
tracker = Tracker(metadata, capture_environment=False, flush_seconds=60)
run_id = tracker.start_run("p", {{}}, {{}})
for step in range(500):
    tracker.log_metric(run_id, "loss", 1 / (step + 1), step=step)
print(run_id)
"""  # no flush, no end_run: the interpreter's exit writes the queue
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from loopml.clock import SystemClock

    metadata = MetadataStore(url, SystemClock())
    assert count(metadata, run_metrics, done.stdout.strip()) == 500
    metadata.dispose()
