"""Online reads with ttl checked at read time, and pushes of fresh values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from loopml.clock import as_utc
from loopml.errors import ValidationError
from loopml.features.aggregations import aggregate_online, value_columns
from loopml.features.definitions import FeatureView, feature_column
from loopml.features.on_demand import FeaturePlan, run_transforms
from loopml.storage.online import Event, EventQuery, EventWrite, OnlineRow, OnlineStore

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
        key = entity_key([row[k] for k in view.join_keys])
        parsed.append(
            (key, _event_time(row[view.source.timestamp_field], view, index), {c: row[c] for c in columns})
        )
    now_ts = now.timestamp()
    if view.aggregations:
        return online.write_events(view.name, EventWrite(parsed, keep_from=now_ts - view.ttl.total_seconds()))
    return online.write(view.name, [(key, ts, now_ts, values) for key, ts, values in parsed])


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
    now_ts = now.timestamp()
    plain = [
        (view.name, key)
        for (view, _), keys in zip(requests, keys_per_view, strict=True)
        if not view.aggregations
        for key in keys
    ]
    logs = [
        EventQuery(view.name, key, now_ts - view.ttl.total_seconds(), now_ts)
        for (view, _), keys in zip(requests, keys_per_view, strict=True)
        if view.aggregations
        for key in dict.fromkeys(keys)
    ]
    found = online.lookup(list(dict.fromkeys(plain)), logs)

    result = OnlineFeatures(entities={k: list(v) for k, v in entities.items()})
    for (view, features), keys in zip(requests, keys_per_view, strict=True):
        ttl = view.ttl.total_seconds()
        rows = [found.rows.get((view.name, key)) for key in keys]
        for feature in features:
            view.dtype_of(feature)
            name = feature_column(view.name, feature, full_feature_names)
            if view.aggregations:
                cells = [
                    _aggregate_cell(view, feature, found.events[(view.name, key)], now_ts) for key in keys
                ]
            else:
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


def _cell(row: OnlineRow | None, feature: str, now_ts: float, ttl: float) -> tuple[Any, str, float | None]:
    """(value, status, event time) of one feature for one entity."""
    if row is None:
        return None, MISSING, None
    if now_ts - row.event_ts > ttl:
        return None, EXPIRED, row.event_ts
    value = row.values.get(feature)
    return value, NULL if value is None else PRESENT, row.event_ts


def _aggregate_cell(
    view: FeatureView, feature: str, events: list[Event], now_ts: float
) -> tuple[Any, str, float | None]:
    """(value, status, newest event time in the window) of one aggregation for one entity."""
    aggregation = next(a for a in view.aggregations if a.name == feature)
    value = aggregate_online(aggregation, events, now_ts)
    since = now_ts - aggregation.window.total_seconds()
    newest = max((ts for ts, _ in events if since <= ts < now_ts), default=None)
    return value, NULL if value is None else PRESENT, newest
