"""Materialisation runs: the history of what was loaded online, and where an incremental run continues."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, insert, select, update

from loopml.features.tables import materialization_runs as runs_table
from loopml.storage.metadata import MetadataStore

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"


@dataclass(frozen=True)
class MaterializationRun:
    """One view's materialisation of the event-time range [start, end]."""

    id: int
    view: str
    view_version: int
    incremental: bool
    start: datetime
    end: datetime
    rows: int
    status: str
    error: str | None
    started_at: datetime
    finished_at: datetime | None

    @property
    def seconds(self) -> float | None:
        """How long the run took; None while it runs."""
        return None if self.finished_at is None else (self.finished_at - self.started_at).total_seconds()


def start_run(
    metadata: MetadataStore, view: str, version: int, start: datetime, end: datetime, *, incremental: bool
) -> MaterializationRun:
    """Record a run as `running` before anything is written, so a crash leaves a trace and no watermark."""
    started_at = metadata.clock.now()
    with metadata.begin() as conn:
        run_id = conn.execute(
            insert(runs_table).values(
                view_name=view,
                view_version=version,
                incremental=incremental,
                range_start=start,
                range_end=end,
                rows_written=0,
                status=RUNNING,
                started_at=started_at,
            )
        ).inserted_primary_key[0]
    return MaterializationRun(
        run_id, view, version, incremental, start, end, 0, RUNNING, None, started_at, None
    )


def finish_run(
    metadata: MetadataStore, run: MaterializationRun, rows: int, error: str | None = None
) -> MaterializationRun:
    """Mark a run succeeded (or failed, with its error) and append the matching event."""
    finished = replace(
        run,
        rows=rows,
        status=FAILED if error is not None else SUCCEEDED,
        error=error,
        finished_at=metadata.clock.now(),
    )
    with metadata.begin() as conn:
        conn.execute(
            update(runs_table)
            .where(runs_table.c.id == run.id)
            .values(rows_written=rows, status=finished.status, error=error, finished_at=finished.finished_at)
        )
        metadata.record_event(
            conn,
            kind=f"materialization.{finished.status}",
            subject=f"materialization:{run.view}",
            reason=error
            or f"wrote {rows} rows of '{run.view}' v{run.view_version} from {run.start:%Y-%m-%d %H:%M:%S} "
            f"to {run.end:%Y-%m-%d %H:%M:%S}",
            data={"run_id": run.id, "version": run.view_version, "rows": rows},
        )
    return finished


def list_runs(metadata: MetadataStore, view: str | None = None, last: int = 50) -> list[MaterializationRun]:
    """The newest `last` runs (of one view, if given), newest first."""
    query = select(runs_table).order_by(runs_table.c.id.desc()).limit(last)
    if view is not None:
        query = query.where(runs_table.c.view_name == view)
    with metadata.begin() as conn:
        return [_run(row) for row in conn.execute(query)]


def covered_until(metadata: MetadataStore, view: str, version: int, since: datetime) -> datetime:
    """How far past `since` successful runs of this view version cover event time without a gap.

    Runs compose: loading [a, b] and then [b, c] leaves online what loading [a, c] would. A failed or
    still-running run covers nothing, nor does one that left a gap, nor one of another version (its values
    may differ). Returns `since` itself when nothing covers it.
    """
    query = (
        select(runs_table.c.range_start, runs_table.c.range_end)
        .where(
            runs_table.c.view_name == view,
            runs_table.c.view_version == version,
            runs_table.c.status == SUCCEEDED,
            runs_table.c.range_end > since,
        )
        .order_by(runs_table.c.range_start)
    )
    covered = since
    with metadata.begin() as conn:
        for start, end in conn.execute(query):
            if start > covered:
                break
            covered = max(covered, end)
    return covered


def incremental_start(
    metadata: MetadataStore, view: str, version: int, end: datetime, ttl: timedelta, lookback: timedelta
) -> datetime | None:
    """Where an incremental run up to `end` starts: the watermark less `lookback`, never before end - ttl.

    Values older than end - ttl read as expired online anyway, so nothing before it is ever reloaded.
    None when successful runs already cover event time up to `end`.
    """
    floor = end - ttl
    covered = covered_until(metadata, view, version, floor)
    if covered >= end:
        return None
    return max(floor, covered - lookback)


def _run(row: Row[Any]) -> MaterializationRun:
    r = row._mapping
    return MaterializationRun(
        id=r["id"],
        view=r["view_name"],
        view_version=r["view_version"],
        incremental=r["incremental"],
        start=r["range_start"],
        end=r["range_end"],
        rows=r["rows_written"],
        status=r["status"],
        error=r["error"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
    )
