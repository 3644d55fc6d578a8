"""Materialisation runs: history, incremental watermarks, failures, late rows, batches and the CLI."""

import re
import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from loopml.cli.main import app
from loopml.errors import MaterializationError, NotFoundError, ValidationError
from loopml.features import FeatureView, Field, ParquetSource
from loopml.features import materialize as materialize_module
from loopml.features.runs import (
    FAILED,
    SUCCEEDED,
    MaterializationRun,
    covered_until,
    finish_run,
    list_runs,
    start_run,
)
from loopml.project import Project
from loopml.storage.metadata import MetadataStore
from tests.features.conftest import USER, ts, write_source
from tests.features.test_aggregations import AGGREGATIONS, random_events, transactions_view
from tests.features.test_online_aggregations import offline_at

DAY = ts("2026-01-01")


def hours(h: float) -> pd.Timestamp:
    return DAY + timedelta(hours=h)


def scores_view(project: Project, rows: list[tuple[int, float, float]], name: str = "scores") -> FeatureView:
    """A view of (user, event hour, score) rows, created when they happened, valid for a day."""
    frame = pd.DataFrame(
        {
            "user_id": [user for user, _, _ in rows],
            "event_timestamp": [hours(h) for _, h, _ in rows],
            "created_timestamp": [hours(h) for _, h, _ in rows],
            "score": [score for _, _, score in rows],
        }
    )
    view = FeatureView(
        name,
        [USER],
        ParquetSource(write_source(project, name, frame), "event_timestamp", "created_timestamp"),
        [Field("score")],
        ttl=timedelta(days=1),
    )
    project.apply([USER, view])
    return view


ROWS = [(1, 1, 1.0), (2, 5, 2.0), (1, 10, 3.0), (3, 14, 4.0)]


def online_scores(project: Project, users: list[int], at: pd.Timestamp) -> list[float | None]:
    project.clock.set(at)
    return project.get_online_features({"user_id": users}, ["scores:score"]).values["score"]


def test_incremental_continues_from_the_watermark_and_writes_only_new_rows(project: Project) -> None:
    scores_view(project, ROWS)
    assert project.materialize(end=hours(6), incremental=True) == {"scores": 2}  # first run: end - ttl
    assert project.materialize(end=hours(12), incremental=True) == {"scores": 1}  # user 1 at 10:00 only
    assert project.materialize(end=hours(12), incremental=True) == {"scores": 0}  # up to date: no run
    assert online_scores(project, [1, 2, 3], hours(12)) == [3.0, 2.0, None]

    runs = list_runs(project.metadata, "scores")
    assert [(r.start, r.end, r.rows, r.status, r.incremental) for r in reversed(runs)] == [
        (hours(6) - timedelta(days=1), hours(6), 2, SUCCEEDED, True),
        (hours(6), hours(12), 1, SUCCEEDED, True),
    ]
    assert all(r.view_version == 1 and r.error is None and r.finished_at is not None for r in runs)
    assert [e.kind for e in project.metadata.events(subject_prefix="materialization:scores")] == [
        "materialization.succeeded",
        "materialization.succeeded",
    ]


def test_end_defaults_to_now_by_the_project_clock(project: Project) -> None:
    scores_view(project, ROWS)
    project.clock.set(hours(12))
    assert project.materialize(incremental=True) == {"scores": 2}  # users 1 and 2; user 3 comes at 14:00
    assert list_runs(project.metadata)[0].end == hours(12)


def test_a_failed_run_is_recorded_and_does_not_advance_the_watermark(project: Project) -> None:
    view = scores_view(project, ROWS)
    project.materialize(end=hours(6), incremental=True)
    source = Path(project.path) / "data" / "scores"
    source.rename(source.with_name("moved"))
    with pytest.raises(MaterializationError, match=r"view 'scores' v1 .*IOException"):
        project.materialize(end=hours(12), incremental=True)
    failed = list_runs(project.metadata, view.name)[0]
    assert (failed.status, failed.rows, failed.start, failed.end) == (FAILED, 0, hours(6), hours(12))
    assert "IOException" in failed.error
    assert project.metadata.events(kind="materialization.failed")[0].subject == "materialization:scores"

    source.with_name("moved").rename(source)
    assert project.materialize(end=hours(16), incremental=True) == {"scores": 2}
    assert list_runs(project.metadata, view.name)[0].start == hours(
        6
    )  # from the last success, not the failure


def test_one_failing_view_does_not_stop_the_others(project: Project) -> None:
    scores_view(project, ROWS)
    scores_view(project, ROWS, name="broken")
    shutil.rmtree(Path(project.path) / "data" / "broken")
    with pytest.raises(MaterializationError, match=r"view 'broken'.*1 other view"):
        project.materialize(end=hours(12))
    assert {r.view: r.status for r in list_runs(project.metadata)} == {"scores": SUCCEEDED, "broken": FAILED}
    assert online_scores(project, [1], hours(12)) == [3.0]


def test_a_changed_definition_starts_over_from_end_minus_ttl(project: Project) -> None:
    view = scores_view(project, ROWS)
    project.materialize(end=hours(6), incremental=True)
    project.apply([replace(view, description="scores, now documented")])
    project.materialize(end=hours(12), incremental=True)
    latest = list_runs(project.metadata, view.name)[0]
    assert (latest.view_version, latest.start, latest.rows) == (2, hours(12) - timedelta(days=1), 2)


def test_range_runs_count_towards_the_watermark_unless_they_leave_a_gap(project: Project) -> None:
    scores_view(project, ROWS)
    project.materialize(end=hours(6))  # not incremental, still recorded
    project.materialize(end=hours(9), incremental=True)
    assert list_runs(project.metadata)[0].start == hours(6)
    project.materialize(start=hours(12), end=hours(13))  # leaves [9, 12] unloaded
    project.materialize(end=hours(15), incremental=True)
    assert list_runs(project.metadata)[0].start == hours(9)  # the gap is loaded, not skipped
    assert online_scores(project, [1, 3], hours(15)) == [3.0, 4.0]
    assert [r.incremental for r in list_runs(project.metadata)] == [True, False, True, False]


def test_lookback_picks_up_rows_that_arrive_after_the_watermark_passed_them(project: Project) -> None:
    view = scores_view(project, ROWS)
    project.materialize(end=hours(6), incremental=True)
    late = pd.DataFrame(
        {"user_id": [4], "event_timestamp": [hours(5.5)], "created_timestamp": [hours(7)], "score": [9.0]}
    )
    late.to_parquet(Path(project.path) / "data" / "scores" / "part-1.parquet", index=False)
    project.materialize(end=hours(8), incremental=True)  # event time only: the late row is before 6:00
    assert online_scores(project, [4], hours(8)) == [None]
    project.materialize(end=hours(10), incremental=True, lookback=timedelta(hours=5))
    assert list_runs(project.metadata, view.name)[0].start == hours(3)
    assert online_scores(project, [4], hours(10)) == [9.0]


def test_incremental_runs_of_an_aggregation_view_equal_one_full_run(project: Project) -> None:
    frame, _ = random_events(5, created=False)
    end = ts("2026-01-25")
    view = transactions_view(project, frame[frame.event_timestamp < end])
    for at in (end - timedelta(days=3), end - timedelta(days=1), end - timedelta(hours=1), end):
        project.materialize(end=at, incremental=True)
    assert len(list_runs(project.metadata, view.name)) == 4
    project.clock.set(end)
    users = [1, 2, 3, 4, 5]
    online = project.get_online_features({"user_id": users}, [f"{view.name}:{a.name}" for a in AGGREGATIONS])
    expected = offline_at(project, view.name, users, end)
    for aggregation in AGGREGATIONS:
        got = [np.nan if v is None else v for v in online.values[aggregation.name]]
        assert np.allclose(got, expected[aggregation.name].astype(float), rtol=1e-12, equal_nan=True)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def view_started(self, run: MaterializationRun) -> None:
        self.calls.append(("started", run.view, run.rows))

    def rows_written(self, run: MaterializationRun, rows: int) -> None:
        self.calls.append(("batch", run.view, rows))

    def view_finished(self, run: MaterializationRun) -> None:
        self.calls.append((run.status, run.view, run.rows))


def test_rows_are_written_and_reported_batch_by_batch(project: Project, monkeypatch) -> None:
    monkeypatch.setattr(materialize_module, "BATCH_ROWS", 2)
    scores_view(project, [(user, 1, float(user)) for user in range(7)])
    progress = Recorder()
    assert project.materialize(end=hours(6), progress=progress) == {"scores": 7}
    assert progress.calls[0] == ("started", "scores", 0)
    assert progress.calls[-1] == (SUCCEEDED, "scores", 7)
    batches = [rows for kind, _, rows in progress.calls if kind == "batch"]
    assert len(batches) >= 4 and max(batches) <= 2 and sum(batches) == 7


def test_materialize_says_what_is_wrong_with_its_arguments(project: Project) -> None:
    scores_view(project, ROWS)
    with pytest.raises(ValidationError, match="pass one of them"):
        project.materialize(end=hours(6), start=hours(1), incremental=True)
    with pytest.raises(ValidationError, match="after end"):
        project.materialize(end=hours(1), start=hours(6))
    with pytest.raises(ValidationError, match="only applies to incremental"):
        project.materialize(end=hours(6), lookback=timedelta(hours=1))
    with pytest.raises(NotFoundError, match=r"'nope'.*the applied ones are scores"):
        project.materialize(end=hours(6), views=["nope"])
    assert list_runs(project.metadata) == []


def test_coverage_of_runs_on_sqlite_and_postgres(metadata: MetadataStore) -> None:
    def run(start: float, end: float, version: int = 1, ok: bool = True) -> None:
        started = start_run(metadata, "v", version, hours(start), hours(end), incremental=True)
        finish_run(metadata, started, 1, error=None if ok else "boom")

    run(0, 2)
    run(2, 4, ok=False)  # a failure covers nothing
    run(1, 3)
    run(3, 5, version=2)  # another version's values may differ
    run(4, 6)  # after a gap
    assert covered_until(metadata, "v", 1, hours(0)) == hours(3)
    assert covered_until(metadata, "v", 2, hours(0)) == hours(0)
    assert covered_until(metadata, "v", 2, hours(3)) == hours(5)
    assert [(r.status, r.error) for r in list_runs(metadata, "v", last=2)] == [
        (SUCCEEDED, None),
        (SUCCEEDED, None),
    ]
    assert list_runs(metadata, "v")[3].status == FAILED


DEFINITIONS = """
from datetime import timedelta
from loopml import Entity, FeatureView, Field, ParquetSource

user = Entity("user", join_keys=["user_id"])
scores = FeatureView(
    "scores", [user], ParquetSource("data/scores/*.parquet", "event_timestamp"), [Field("score")],
    ttl=timedelta(days=1),
)
"""


def test_materialize_and_runs_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    p = ["-p", str(tmp_path)]
    assert runner.invoke(app, ["init", str(tmp_path)]).exit_code == 0
    (tmp_path / "features.py").write_text(DEFINITIONS)
    (tmp_path / "data" / "scores").mkdir(parents=True)
    pd.DataFrame(
        {"user_id": [1, 2], "event_timestamp": [hours(1), hours(5)], "score": [1.0, 2.0]}
    ).to_parquet(tmp_path / "data" / "scores" / "part-0.parquet")
    assert runner.invoke(app, ["apply", *p]).exit_code == 0

    def run(*args: str) -> str:
        result = runner.invoke(app, [*args, *p])
        assert result.exit_code == 0, result.output
        return " ".join(re.sub(r"[│┃]", " ", result.output).split())  # table cells, without borders

    first = run("materialize", "--incremental", "--end", "2026-01-01T06:00:00")
    assert "scores v1 2025-12-31 06:00:00 2026-01-01 06:00:00 2 succeeded" in first
    assert "Up to date" in run(
        "materialize", "--incremental", "--end", "2026-01-01T06:00:00", "--view", "scores"
    )
    ranged = run("materialize", "--start", "2026-01-01T04:00:00", "--end", "2026-01-01T06:00:00")
    assert "2026-01-01 04:00:00 2026-01-01 06:00:00 1 succeeded" in ranged
    history = run("features", "runs", "scores")
    assert history.count("succeeded") == 2 and "incremental" in history and "range" in history
    assert "No materialisation runs of 'other' yet" in run("features", "runs", "other")
    unknown = runner.invoke(app, ["materialize", "--view", "other", *p])
    assert unknown.exit_code == 1 and isinstance(unknown.exception, NotFoundError)
