"""Online reads with ttl checked at read time, and pushes of fresh values."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from loopml.clock import as_utc
from loopml.errors import ValidationError, shown
from loopml.features.aggregations import aggregate_online, value_columns
from loopml.features.definitions import FeatureView, feature_column
from loopml.features.on_demand import FeaturePlan, run_transforms
from loopml.storage.online import Event, EventQuery, EventWrite, Lookup, OnlineRow, OnlineStore

PRESENT, MISSING, EXPIRED, NULL = "present", "missing", "expired", "null"


def entity_key(values: Sequence[Any]) -> str:
    """The online key for a tuple of join key values (ints and their string form share a key)."""
    return "\x1f".join(str(v) for v in values)


def push(online: OnlineStore, view: FeatureView, rows: Sequence[Mapping[str, Any]], *, now: datetime) -> int:
    """Write fresh rows straight to the online store; returns how many were written.

    A row holds the join keys, the event time (ISO 8601 text or a datetime) and, for a plain view, every
    feature (last write wins by event time); for an aggregation view, the columns its aggregations read
    (each row is one event, added to the key's log).
    """
    if not isinstance(view, FeatureView):
        raise ValidationError(f"'{view.name}' is computed on demand; push to the feature views it reads.")
    columns = value_columns(view) if view.aggregations else list(view.feature_names)
    expected = {*view.join_keys, view.source.timestamp_field, *columns}
    parsed = []
    for index, row in enumerate(rows):
        missing = [k for k in (*view.join_keys, view.source.timestamp_field, *columns) if k not in row]
        unknown = sorted(set(row) - expected)
        if missing or unknown:
            raise ValidationError(
                f"Row {index} pushed to '{view.name}' "
                + (f"lacks {missing}" if missing else f"has unknown field(s) {unknown}")
                + f"; send the join keys {list(view.join_keys)}, '{view.source.timestamp_field}' and "
                f"{columns} (null for none)."
            )
        for column in columns:
            _check_value(view, column, row[column], index)
        key = entity_key([row[k] for k in view.join_keys])
        parsed.append(
            (key, _event_time(row[view.source.timestamp_field], view, index), {c: row[c] for c in columns})
        )
    now_ts = now.timestamp()
    if view.aggregations:
        return online.write_events(view.name, EventWrite(parsed, keep_from=now_ts - view.ttl.total_seconds()))
    return online.write(view.name, [(key, ts, now_ts, values) for key, ts, values in parsed])


_INT64 = (-(2**63), 2**63 - 1)


def _check_value(view: FeatureView, column: str, value: Any, index: int) -> None:
    """Refuse a pushed value its field's dtype cannot hold (null is always allowed: no value)."""
    if value is None:
        return
    dtype = view.source_columns.get(column)  # an aggregation view's source columns declare none
    if dtype == "float64":
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and abs(value) <= sys.float_info.max
        )
        ok = ok and not (isinstance(value, float) and math.isnan(value))
        what = "a finite number"
    elif dtype == "int64":
        ok = isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]
        what = "an integer within 64 bits"
    elif dtype == "string":
        ok, what = isinstance(value, str), "a string"
    elif dtype == "bool":
        ok, what = isinstance(value, bool), "true or false"
    else:
        return
    if not ok:
        raise ValidationError(
            f"Row {index} pushed to '{view.name}': '{column}' must be {what} ({dtype}), got {shown(value)}."
        )


def _event_time(value: Any, view: FeatureView, index: int) -> float:
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise ValidationError(
            f"Row {index}: '{view.source.timestamp_field}' must be an ISO 8601 time, got {value!r}."
        ) from exc
    return as_utc(moment).timestamp()


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
    query = OnlineQuery(requests, entities, now)
    found = online.lookup(query.rows, query.logs) if query.requests else Lookup()
    return query.result(found, full_feature_names)


async def read_online_async(
    online: OnlineStore,
    requests: Sequence[tuple[FeatureView, Sequence[str]]],
    entities: Mapping[str, Sequence[Any]],
    *,
    now: datetime,
    full_feature_names: bool = False,
) -> OnlineFeatures:
    """`read_online` for the server's event loop."""
    query = OnlineQuery(requests, entities, now)
    found = await online.alookup(query.rows, query.logs) if query.requests else Lookup()
    return query.result(found, full_feature_names)


class OnlineQuery:
    """The keys one online read needs (checked against the views), and how to turn what was found into
    values with statuses."""

    def __init__(
        self,
        requests: Sequence[tuple[FeatureView, Sequence[str]]],
        entities: Mapping[str, Sequence[Any]],
        now: datetime,
    ) -> None:
        self.requests = requests
        self.entities = {k: list(v) for k, v in entities.items()}
        self.now_ts = now.timestamp()
        lengths = {len(v) for v in self.entities.values()}
        if requests and len(lengths) != 1:
            raise ValidationError(f"Entity columns must have equal lengths, got {sorted(lengths)}.")
        n_rows = lengths.pop() if lengths else 0
        self.keys_per_view: list[list[str]] = []
        for view, features in requests:
            for feature in features:
                view.dtype_of(feature)  # an unknown feature is an error, not a column of nulls
            missing = [k for k in view.join_keys if k not in self.entities]
            if missing:
                raise ValidationError(
                    f"Entities lack join key(s) {missing} needed by feature view '{view.name}'."
                )
            columns = [self.entities[k] for k in view.join_keys]
            self.keys_per_view.append([entity_key([c[i] for c in columns]) for i in range(n_rows)])
        pairs = list(zip(requests, self.keys_per_view, strict=True))
        self.rows = list(
            dict.fromkeys(
                (view.name, key) for (view, _), keys in pairs if not view.aggregations for key in keys
            )
        )
        self.logs = [
            EventQuery(view.name, key, self.now_ts - view.ttl.total_seconds(), self.now_ts)
            for (view, _), keys in pairs
            if view.aggregations
            for key in dict.fromkeys(keys)
        ]

    def result(self, found: Lookup, full_feature_names: bool) -> OnlineFeatures:
        result = OnlineFeatures(entities=self.entities)
        for (view, features), keys in zip(self.requests, self.keys_per_view, strict=True):
            if view.aggregations:
                columns = _aggregate_columns(
                    view, features, [found.events[(view.name, k)] for k in keys], self.now_ts
                )
            else:
                columns = _row_columns(
                    view, features, [found.rows.get((view.name, k)) for k in keys], self.now_ts
                )
            for feature, values, statuses, times in columns:
                name = feature_column(view.name, feature, full_feature_names)
                result.values[name], result.statuses[name], result.event_timestamps[name] = (
                    values,
                    statuses,
                    times,
                )
        return result


def with_transforms(
    plan: FeaturePlan,
    found: OnlineFeatures,
    request_data: Mapping[str, Sequence[Any]] | None = None,
    *,
    full_feature_names: bool = False,
) -> OnlineFeatures:
    """`found` (a read of `plan.views`) with the on-demand features added and inputs nobody asked for removed."""
    if not plan.transforms and not plan.hidden:
        return found
    rows = len(next(iter(found.entities.values()), []))
    outputs = run_transforms(plan, found.values, request_data or {}, rows, full_feature_names)
    hidden = {feature_column(view, feature, full_feature_names) for view, feature in plan.hidden}
    result = OnlineFeatures(entities=found.entities)
    for name in found.values:
        if name not in hidden:
            result.values[name] = found.values[name]
            result.statuses[name] = found.statuses[name]
            result.event_timestamps[name] = found.event_timestamps[name]
    for name, values in outputs.items():
        result.values[name] = values
        result.statuses[name] = [NULL if v is None else PRESENT for v in values]
        result.event_timestamps[name] = [None] * rows
    return result


Column = tuple[str, list[Any], list[str], list[float | None]]  # feature, values, statuses, event times


def _row_columns(
    view: FeatureView, features: Sequence[str], rows: Sequence[OnlineRow | None], now_ts: float
) -> Iterator[Column]:
    """Each feature's values, statuses and event times over the entities, from the rows read for them."""
    ttl = view.ttl.total_seconds()
    live = [row if row is not None and now_ts - row.event_ts <= ttl else None for row in rows]
    absent = [MISSING if row is None else EXPIRED for row in rows]
    times = [None if row is None else row.event_ts for row in rows]
    for feature in features:
        values = [None if row is None else row.values.get(feature) for row in live]
        statuses = [
            absent[i] if live[i] is None else NULL if value is None else PRESENT
            for i, value in enumerate(values)
        ]
        yield feature, values, statuses, list(times)


def _aggregate_columns(
    view: FeatureView, features: Sequence[str], logs: Sequence[list[Event]], now_ts: float
) -> Iterator[Column]:
    for feature in features:
        cells = [_aggregate_cell(view, feature, events, now_ts) for events in logs]
        yield (
            feature,
            [value for value, _, _ in cells],
            [status for _, status, _ in cells],
            [ts for _, _, ts in cells],
        )


def _aggregate_cell(
    view: FeatureView, feature: str, events: list[Event], now_ts: float
) -> tuple[Any, str, float | None]:
    """(value, status, newest event time in the window) of one aggregation for one entity."""
    aggregation = next(a for a in view.aggregations if a.name == feature)
    value = aggregate_online(aggregation, events, now_ts)
    since = now_ts - aggregation.window.total_seconds()
    newest = max((ts for ts, _ in events if since <= ts < now_ts), default=None)
    return value, NULL if value is None else PRESENT, newest
