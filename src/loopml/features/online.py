"""Materialisation (offline → online) and online reads with ttl checked at read time."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from loopml.errors import ValidationError
from loopml.features.definitions import FeatureView, feature_column
from loopml.features.historical import quote, source_sql
from loopml.storage.offline import duckdb_connection
from loopml.storage.online import OnlineRow, OnlineStore

BATCH_ROWS = 50_000
PRESENT, MISSING, EXPIRED, NULL = "present", "missing", "expired", "null"


def entity_key(values: Sequence[Any]) -> str:
    """The online key for a tuple of join key values (ints and their string form share a key)."""
    return "\x1f".join(str(v) for v in values)


def materialize_view(
    view: FeatureView,
    online: OnlineStore,
    *,
    base_dir: Path,
    start: datetime,
    end: datetime,
    connect: Callable[[], duckdb.DuckDBPyConnection] = duckdb_connection,
) -> int:
    """Copy the latest row per entity with event time in [start, end] to the online store; returns rows."""
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


@dataclass
class OnlineFeatures:
    """Feature values for a list of entities, with a status and event time per value."""

    entities: dict[str, list[Any]]
    values: dict[str, list[Any]] = field(default_factory=dict)
    statuses: dict[str, list[str]] = field(default_factory=dict)
    event_timestamps: dict[str, list[float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, list[Any]]:
        return {**self.entities, **self.values}

    def to_df(self) -> pd.DataFrame:
        return pd.DataFrame(self.to_dict())


def read_online(
    online: OnlineStore,
    requests: Sequence[tuple[FeatureView, Sequence[str]]],
    entities: Mapping[str, Sequence[Any]],
    *,
    now: datetime,
    full_feature_names: bool = False,
) -> OnlineFeatures:
    """Read every requested view for every entity row in one round trip; expired values read as None."""
    if not requests:
        return OnlineFeatures(entities={k: list(v) for k, v in entities.items()})
    lengths = {len(v) for v in entities.values()}
    if len(lengths) != 1:
        raise ValidationError(f"Entity columns must have equal lengths, got {sorted(lengths)}.")
    n_rows = lengths.pop()
    keys_per_view = []
    for view, _ in requests:
        missing = [k for k in view.join_keys if k not in entities]
        if missing:
            raise ValidationError(
                f"Entities lack join key(s) {missing} needed by feature view '{view.name}'."
            )
        keys_per_view.append([entity_key([entities[k][i] for k in view.join_keys]) for i in range(n_rows)])
    lookup = [
        (view.name, key) for (view, _), keys in zip(requests, keys_per_view, strict=True) for key in keys
    ]
    found = online.read(list(dict.fromkeys(lookup)))

    result = OnlineFeatures(entities={k: list(v) for k, v in entities.items()})
    now_ts = now.timestamp()
    for (view, features), keys in zip(requests, keys_per_view, strict=True):
        ttl = view.ttl.total_seconds()
        rows = [found.get((view.name, key)) for key in keys]
        for feature in features:
            view.dtype_of(feature)
            name = feature_column(view.name, feature, full_feature_names)
            cells = [_cell(row, feature, now_ts, ttl) for row in rows]
            values, statuses, times = (
                (list(column) for column in zip(*cells, strict=True)) if cells else ([], [], [])
            )
            result.values[name], result.statuses[name], result.event_timestamps[name] = (
                values,
                statuses,
                times,
            )
    return result


def _cell(row: OnlineRow | None, feature: str, now_ts: float, ttl: float) -> tuple[Any, str, float | None]:
    """(value, status, event time) of one feature for one entity."""
    if row is None:
        return None, MISSING, None
    if now_ts - row.event_ts > ttl:
        return None, EXPIRED, row.event_ts
    value = row.values.get(feature)
    return value, NULL if value is None else PRESENT, row.event_ts
