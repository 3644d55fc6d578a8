"""Materialisation: the latest values (or, for aggregation views, the events) of a range, offline → online."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from loopml.features.aggregations import value_columns
from loopml.features.definitions import FeatureView
from loopml.features.historical import source_sql
from loopml.features.online import entity_key
from loopml.storage.offline import duckdb_connection, quote
from loopml.storage.online import EventWrite, OnlineStore

BATCH_ROWS = 50_000


def materialize_view(
    view: FeatureView,
    online: OnlineStore,
    *,
    base_dir: Path,
    start: datetime,
    end: datetime,
    connect: Callable[[], duckdb.DuckDBPyConnection] = duckdb_connection,
) -> int:
    """Copy the latest row per entity with event time in [start, end] to the online store; returns rows.

    For an aggregation view, every event in [start, end] is copied instead, replacing what the log held for
    that range, and events older than the view's ttl before `end` are trimmed.
    """
    if view.aggregations:
        return _materialize_events(view, online, base_dir=base_dir, start=start, end=end, connect=connect)
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
    return written


def _materialize_events(
    view: FeatureView,
    online: OnlineStore,
    *,
    base_dir: Path,
    start: datetime,
    end: datetime,
    connect: Callable[[], duckdb.DuckDBPyConnection],
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
    if pending:
        written += online.write_events(view.name, EventWrite(pending, replace, keep_from))
    return written
