"""Windowed aggregations, one definition computed two ways that agree: in DuckDB for training sets and in
Python over the events kept online for serving.

An event counts for time t when t - window <= event time < t and, if the source has a created time, it was
created before t: strictly before, so the event being scored at t never counts in its own features. Count and
sum over no events are 0; mean, min and max are null.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from loopml.features.definitions import Aggregation, FeatureView
from loopml.storage.offline import quote

EVENT = "__event"
_SQL_FUNCTIONS = {"count": "count", "sum": "sum", "mean": "avg", "min": "min", "max": "max"}


def micros(window: timedelta) -> int:
    return window // timedelta(microseconds=1)


def value_columns(view: FeatureView) -> list[str]:
    """The source columns the view's aggregations read, in first-use order."""
    return list(dict.fromkeys(a.column for a in view.aggregations if a.column is not None))


def aggregation_ctes(
    alias: str,
    view: FeatureView,
    outputs: Sequence[tuple[str, str]],
    source: str,
    timestamp_field: str,
    row_id: str,
) -> list[str]:
    """CTEs giving, for each entity row, the requested aggregations of `view` as of the row's time.

    Without a created time, entity rows and events form one time-ordered stream per key and each aggregation
    is a RANGE window over it (sort once, then linear). With a created time, an event's visibility depends on
    the row's time, so a range join bounded by the longest window filters on both times.
    """
    keys = [quote(k) for k in view.join_keys]
    key_list = ", ".join(keys)
    columns = [quote(c) for c in value_columns(view)]
    by_name = {a.name: a for a in view.aggregations}
    wanted = [(by_name[feature], out) for feature, out in outputs]
    ts = f"f.{quote(view.source.timestamp_field)}::TIMESTAMPTZ"
    semi = " AND ".join(f"f.{k} = k.{k}" for k in keys)
    created = view.source.created_timestamp_field
    events = (
        f"{alias}_events AS (SELECT {', '.join(f'f.{k}' for k in keys)}, {ts} AS __ts, "
        + (f"f.{quote(created)}::TIMESTAMPTZ AS __created, " if created else "")
        + f"1 AS {EVENT}{''.join(f', f.{c}' for c in columns)} FROM {source} AS f "
        f"SEMI JOIN (SELECT DISTINCT {key_list} FROM entity_df) AS k ON {semi})"
    )
    entity_ts = f"e.{quote(timestamp_field)}"
    if created:
        return [events, _range_join_cte(alias, keys, wanted, entity_ts, row_id)]
    windows = sorted({micros(a.window) for a, _ in wanted})
    stream = (
        f"{alias}_stream AS (SELECT {key_list}, __ts, {EVENT}{''.join(f', {c}' for c in columns)}, "
        f"NULL::BIGINT AS {row_id} FROM {alias}_events UNION ALL BY NAME "
        f"SELECT {', '.join(f'e.{k}' for k in keys)}, {entity_ts} AS __ts, e.{row_id} FROM entity_df AS e)"
    )
    selects = ", ".join(
        f"{_sql_aggregate(a, '', f'OVER w{windows.index(micros(a.window))}')} AS {quote(out)}"
        for a, out in wanted
    )
    named = ", ".join(
        f"w{i} AS (PARTITION BY {key_list} ORDER BY __ts RANGE BETWEEN to_microseconds({size}) PRECEDING "
        "AND to_microseconds(1) PRECEDING)"
        for i, size in enumerate(windows)
    )
    result = (
        f"{alias} AS (SELECT {row_id}, {selects} FROM {alias}_stream WINDOW {named} "
        f"QUALIFY {row_id} IS NOT NULL)"
    )
    return [events, stream, result]


def _sql_aggregate(aggregation: Aggregation, prefix: str, scope: str) -> str:
    """`aggregation` in SQL over columns qualified by `prefix`, limited by `scope` (OVER or FILTER)."""
    column = prefix + (quote(aggregation.column) if aggregation.column else EVENT)
    expression = f"{_SQL_FUNCTIONS[aggregation.function]}({column}) {scope}"
    if aggregation.function == "count":
        return f"{expression}::BIGINT"
    if aggregation.function == "sum":
        return f"coalesce({expression}, 0)::DOUBLE"
    return f"({expression})::DOUBLE"


def _range_join_cte(
    alias: str, keys: list[str], wanted: list[tuple[Aggregation, str]], entity_ts: str, row_id: str
) -> str:
    longest = max(micros(a.window) for a, _ in wanted)
    selects = ", ".join(
        _sql_aggregate(a, "f.", f"FILTER (WHERE f.__ts >= {entity_ts} - to_microseconds({micros(a.window)}))")
        + f" AS {quote(out)}"
        for a, out in wanted
    )
    on = " AND ".join(f"f.{k} = e.{k}" for k in keys)
    return (
        f"{alias} AS (SELECT e.{row_id}, {selects} FROM entity_df AS e LEFT JOIN {alias}_events AS f "
        f"ON {on} AND f.__ts < {entity_ts} AND f.__created < {entity_ts} "
        f"AND f.__ts >= {entity_ts} - to_microseconds({longest}) GROUP BY e.{row_id})"
    )


def aggregate_online(
    aggregation: Aggregation, events: Sequence[tuple[float, dict[str, Any]]], now_ts: float
) -> float | int | None:
    """The aggregation over stored (event time, values) events, as of `now_ts` (seconds since the epoch)."""
    window = aggregation.window.total_seconds()
    since = now_ts - window
    if aggregation.column is None:
        return sum(1 for ts, _ in events if since <= ts < now_ts)
    values = [
        v for ts, row in events if since <= ts < now_ts and (v := row.get(aggregation.column)) is not None
    ]
    if aggregation.function == "count":
        return len(values)
    if aggregation.function == "sum":
        return float(math.fsum(values))
    if not values:
        return None
    if aggregation.function == "mean":
        return float(math.fsum(values) / len(values))
    return float(min(values) if aggregation.function == "min" else max(values))
