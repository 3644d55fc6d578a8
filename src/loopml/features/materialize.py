"""Materialisation: the latest values (or, for aggregation views, the events) of a range, offline → online.

Each view's run is recorded (features/runs.py): the history `loopml features runs` shows, and the watermark
an incremental run continues from. Sources are read in Arrow batches of BATCH_ROWS and written batch by
batch, so memory stays bounded whatever the range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import duckdb

from loopml.errors import MaterializationError, NotFoundError, ValidationError
from loopml.features.aggregations import value_columns
from loopml.features.definitions import FeatureView
from loopml.features.historical import source_sql
from loopml.features.online import entity_key
from loopml.features.registry import list_definitions
from loopml.features.runs import MaterializationRun, finish_run, incremental_start, start_run
from loopml.storage.metadata import MetadataStore
from loopml.storage.offline import duckdb_connection, quote
from loopml.storage.online import EventWrite, OnlineStore

BATCH_ROWS = 50_000


class MaterializeProgress(Protocol):
    """What a caller (the CLI's progress bars) hears while views are materialised."""

    def view_started(self, run: MaterializationRun) -> None: ...

    def rows_written(self, run: MaterializationRun, rows: int) -> None: ...

    def view_finished(self, run: MaterializationRun) -> None: ...


def materialize(
    metadata: MetadataStore,
    online: OnlineStore,
    *,
    base_dir: Path,
    end: datetime,
    start: datetime | None = None,
    views: Sequence[str] | None = None,
    incremental: bool = False,
    lookback: timedelta = timedelta(0),
    connect: Callable[[], duckdb.DuckDBPyConnection] = duckdb_connection,
    progress: MaterializeProgress | None = None,
) -> dict[str, int]:
    """Materialise every applied feature view (or the named ones) up to `end`; returns rows written per view.

    Without `start` a view loads from end - ttl. `incremental` continues from the end of the view's
    successful runs of its current version, less `lookback`, and skips a view they already cover up to `end`.
    A view that fails is recorded failed and the others still run; the failures are then raised together.
    """
    _check_range(start, end, incremental, lookback)
    written: dict[str, int] = {}
    failures: list[tuple[MaterializationRun, Exception]] = []
    for view, version in _applied_views(metadata, views):
        if incremental:
            view_start = incremental_start(metadata, view.name, version, end, view.ttl, lookback)
            if view_start is None:  # its runs already cover event time up to `end`
                written[view.name] = 0
                continue
        else:
            view_start = end - view.ttl if start is None else start
        run = start_run(metadata, view.name, version, view_start, end, incremental=incremental)
        try:
            written[view.name] = _materialize_run(view, run, metadata, online, base_dir, connect, progress)
        except Exception as exc:
            failures.append((run, exc))
    if failures:
        raise MaterializationError(_failure_message(failures, len(written))) from failures[0][1]
    return written


def _materialize_run(
    view: FeatureView,
    run: MaterializationRun,
    metadata: MetadataStore,
    online: OnlineStore,
    base_dir: Path,
    connect: Callable[[], duckdb.DuckDBPyConnection],
    progress: MaterializeProgress | None,
) -> int:
    """Materialise one view's range and record how its run ended, failed runs included."""
    on_batch = None
    if progress is not None:
        progress.view_started(run)
        on_batch = partial(progress.rows_written, run)
    try:
        rows = materialize_view(
            view, online, base_dir=base_dir, start=run.start, end=run.end, connect=connect, on_batch=on_batch
        )
    except BaseException as exc:  # an interrupt is recorded too, then stops everything
        finished = finish_run(metadata, run, 0, error=f"{type(exc).__name__}: {exc}")
        if progress is not None:
            progress.view_finished(finished)
        raise
    finished = finish_run(metadata, run, rows)
    if progress is not None:
        progress.view_finished(finished)
    return rows


def _check_range(start: datetime | None, end: datetime, incremental: bool, lookback: timedelta) -> None:
    if incremental and start is not None:
        raise ValidationError(
            f"start={start.isoformat()} and incremental both set where materialising begins; pass one of them."
        )
    if start is not None and start > end:
        raise ValidationError(
            f"start {start.isoformat()} is after end {end.isoformat()}; materialise a range that runs forward."
        )
    if lookback < timedelta(0) or (lookback and not incremental):
        raise ValidationError(
            f"lookback {lookback} must be zero or more, and only applies to incremental materialisation."
        )


def _applied_views(metadata: MetadataStore, names: Sequence[str] | None) -> list[tuple[FeatureView, int]]:
    """The applied feature views to materialise, with their versions, in the order asked for."""
    applied = {d.name: d for d in list_definitions(metadata, "feature_view")}
    if names is None:
        names = list(applied)
    unknown = [name for name in names if name not in applied]
    if unknown:
        raise NotFoundError(
            f"No applied feature view named {', '.join(repr(n) for n in unknown)} to materialise; the applied "
            f"ones are {', '.join(applied) or 'none'}. Define it and run `loopml apply`."
        )
    return [(FeatureView.from_spec(applied[n].spec), applied[n].version) for n in dict.fromkeys(names)]


def _failure_message(failures: list[tuple[MaterializationRun, Exception]], succeeded: int) -> str:
    failed = "; ".join(
        f"view '{run.view}' v{run.view_version} ({run.start:%Y-%m-%d %H:%M:%S} to {run.end:%Y-%m-%d %H:%M:%S}): "
        f"{type(exc).__name__}: {exc}"
        for run, exc in failures
    )
    return (
        f"Materialising failed for {failed}. {succeeded} other view(s) were materialised. Fix the cause and run "
        "`loopml materialize` again (an incremental run continues from the last successful one); "
        "`loopml features runs` shows the history."
    )


def materialize_view(
    view: FeatureView,
    online: OnlineStore,
    *,
    base_dir: Path,
    start: datetime,
    end: datetime,
    connect: Callable[[], duckdb.DuckDBPyConnection] = duckdb_connection,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Copy the latest row per entity with event time in [start, end] to the online store; returns rows.

    For an aggregation view, every event in [start, end] is copied instead, replacing what the log held for
    that range, and events older than the view's ttl before `end` are trimmed. `on_batch` hears the rows of
    each batch as it is written.
    """
    report = on_batch or _ignore
    if view.aggregations:
        return _materialize_events(
            view, online, base_dir=base_dir, start=start, end=end, connect=connect, on_batch=report
        )
    ts = quote(view.source.timestamp_field)
    created = view.source.created_timestamp_field
    order = f"{ts} DESC" + (f", {quote(created)} DESC" if created else "")
    created_expr = f"epoch({quote(created)}::TIMESTAMPTZ)" if created else f"epoch({ts}::TIMESTAMPTZ)"
    keys = ", ".join(quote(k) for k in view.join_keys)
    features = ", ".join(quote(f) for f in view.feature_names)
    sql = (
        f"SELECT {keys}, epoch({ts}::TIMESTAMPTZ) AS __event_ts, {created_expr} AS __created_ts, {features} "
        f"FROM {source_sql(view, base_dir)} WHERE {ts}::TIMESTAMPTZ BETWEEN ? AND ? "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {order}) = 1"
    )
    written = 0
    n_keys = len(view.join_keys)
    with connect() as conn:
        reader = conn.sql(sql, params=[start, end]).to_arrow_reader(BATCH_ROWS)
        for batch in reader:
            columns = batch.to_pydict()
            names = list(columns)
            rows = []
            for i in range(batch.num_rows):
                key = entity_key([columns[n][i] for n in names[:n_keys]])
                values = {n: columns[n][i] for n in names[n_keys + 2 :]}
                rows.append((key, columns["__event_ts"][i], columns["__created_ts"][i], values))
            written += online.write(view.name, rows)
            report(len(rows))
    return written


def _materialize_events(
    view: FeatureView,
    online: OnlineStore,
    *,
    base_dir: Path,
    start: datetime,
    end: datetime,
    connect: Callable[[], duckdb.DuckDBPyConnection],
    on_batch: Callable[[int], None],
) -> int:
    """Stream the events, ordered by key, and write each key's events in one batch (replace is per key)."""
    ts = quote(view.source.timestamp_field)
    created = view.source.created_timestamp_field  # events recorded after `end` were not known then
    keys = ", ".join(quote(k) for k in view.join_keys)
    columns = value_columns(view)
    sql = (
        f"SELECT {keys}, epoch({ts}::TIMESTAMPTZ) AS __event_ts{''.join(f', {quote(c)}' for c in columns)} "
        f"FROM {source_sql(view, base_dir)} WHERE {ts}::TIMESTAMPTZ BETWEEN ? AND ? "
        + (f"AND {quote(created)}::TIMESTAMPTZ <= ? " if created else "")
        + f"ORDER BY {keys}, {ts}"
    )
    params = [start, end, end] if created else [start, end]
    n_keys = len(view.join_keys)
    replace = (start.timestamp(), end.timestamp())
    keep_from = end.timestamp() - view.ttl.total_seconds()
    written = 0
    pending: list[tuple[str, float, dict[str, Any]]] = []
    with connect() as conn:
        for batch in conn.sql(sql, params=params).to_arrow_reader(BATCH_ROWS):
            data = batch.to_pydict()
            names = list(data)
            for i in range(batch.num_rows):
                key = entity_key([data[n][i] for n in names[:n_keys]])
                pending.append((key, data["__event_ts"][i], {c: data[c][i] for c in columns}))
            # Hold back the last key: its events may continue in the next batch.
            last = pending[-1][0] if pending else None
            ready = [event for event in pending if event[0] != last]
            pending = pending[len(ready) :]
            if ready:
                written += online.write_events(view.name, EventWrite(ready, replace, keep_from))
                on_batch(len(ready))
    if pending:
        written += online.write_events(view.name, EventWrite(pending, replace, keep_from))
        on_batch(len(pending))
    return written


def _ignore(rows: int) -> None:
    """The batch hook when nobody listens."""
