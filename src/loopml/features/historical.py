"""Point-in-time correct training sets, as one set-based DuckDB query.

For each entity row and each requested view: the feature row with the same join keys whose event time is at
or before the entity row's time and no older than the view's ttl, created no later than the entity row's time
(so a backfill written afterwards cannot leak into the past), the latest event time winning and ties going to
the latest created time. Entity rows with no match keep their place with nulls (a LEFT join). The work is
window functions and an ASOF join in DuckDB, reading only the rows of keys present in the entity frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from loopml.errors import ValidationError
from loopml.features.aggregations import aggregation_ctes
from loopml.features.definitions import FeatureView, feature_column
from loopml.features.sources import source_relation
from loopml.storage.offline import duckdb_connection, quote

ROW_ID = "__loopml_row"


def source_sql(view: FeatureView, base_dir: Path) -> str:
    """A DuckDB table expression over the view's source (Parquet or CSV files, a query, a stored DataFrame),
    with the columns the view reads typed as declared; checked once per process (see `source_relation`)."""
    return source_relation(view.name, view.source, view.source_columns, base_dir)


def get_historical_features(
    entity_df: pd.DataFrame,
    requests: Sequence[tuple[FeatureView, Sequence[str]]],
    *,
    base_dir: Path,
    timestamp_field: str = "event_timestamp",
    full_feature_names: bool = False,
    connect: Callable[[], duckdb.DuckDBPyConnection] = duckdb_connection,
) -> pd.DataFrame:
    """Join the requested features onto `entity_df` as of each row's timestamp; row order is kept."""
    _validate(entity_df, requests, timestamp_field, full_feature_names)
    entity = entity_df.copy()
    entity[timestamp_field] = _as_utc_series(entity[timestamp_field], timestamp_field)
    entity[ROW_ID] = range(len(entity))

    ctes, selects, joins = [], [], []
    for index, (view, features) in enumerate(requests):
        alias = f"v{index}"
        outputs = [(f, feature_column(view.name, f, full_feature_names)) for f in features]
        if view.aggregations:
            ctes.extend(
                aggregation_ctes(alias, view, outputs, source_sql(view, base_dir), timestamp_field, ROW_ID)
            )
        else:
            ctes.extend(_view_ctes(alias, view, outputs, base_dir, timestamp_field))
        selects.extend(f"{alias}.{quote(out)}" for _, out in outputs)
        joins.append(f"LEFT JOIN {alias} USING ({ROW_ID})")

    sql = (
        f"WITH {', '.join(ctes)} "
        f"SELECT e.*, {', '.join(selects)} FROM entity_df AS e {' '.join(joins)} ORDER BY e.{ROW_ID}"
    )
    with connect() as conn:
        conn.register("entity_df", entity)
        result = conn.execute(sql).df()
    result = result.drop(columns=[ROW_ID])
    result[timestamp_field] = _as_utc_series(result[timestamp_field], timestamp_field)
    return result


def entity_rows_in_range(
    requests: Sequence[tuple[FeatureView, Sequence[str]]],
    *,
    start: datetime,
    end: datetime,
    base_dir: Path,
    timestamp_field: str = "event_timestamp",
    connect: Callable[[], duckdb.DuckDBPyConnection] = duckdb_connection,
) -> pd.DataFrame:
    """The entity rows of an entity-less retrieval: every distinct (join keys, event time) with
    start <= event time <= end in the requested views' sources, ordered by time then keys."""
    if not requests:
        raise ValidationError("No features requested; pass features=['view:feature', ...].")
    if start > end:
        raise ValidationError(
            f"The time range is empty: start {start.isoformat()} is after end {end.isoformat()}."
        )
    keys = requests[0][0].join_keys
    other = next((view for view, _ in requests if view.join_keys != keys), None)
    if other is not None:
        raise ValidationError(
            f"Entity-less retrieval needs one set of join keys; '{requests[0][0].name}' has {list(keys)} and "
            f"'{other.name}' has {list(other.join_keys)}. Pass an entity_df instead."
        )
    key_list = ", ".join(quote(k) for k in keys)
    selects = " UNION ".join(
        f"SELECT DISTINCT {key_list}, {quote(view.source.timestamp_field)}::TIMESTAMPTZ AS {quote(timestamp_field)} "
        f"FROM {source_sql(view, base_dir)} WHERE {quote(view.source.timestamp_field)}::TIMESTAMPTZ BETWEEN ? AND ?"
        for view, _ in requests
    )
    with connect() as conn:
        rows = conn.execute(
            f"SELECT * FROM ({selects}) ORDER BY {quote(timestamp_field)}, {key_list}",
            [moment for _ in requests for moment in (start, end)],
        ).df()
    rows[timestamp_field] = _as_utc_series(rows[timestamp_field], timestamp_field)
    return rows


def _view_ctes(
    alias: str, view: FeatureView, outputs: Sequence[tuple[str, str]], base_dir: Path, timestamp_field: str
) -> list[str]:
    """CTEs resolving each entity row to its point-in-time row of `view`; `alias` holds the result.

    A feature row becomes known at avail = greatest(event time, created time). Per key, in avail order, the
    running best row by (event time, created time) is the answer for any moment from that avail on, so one
    ASOF join on avail <= entity time finds it. If that best row is older than the ttl, every other known row
    is older still, and the features are null.
    """
    keys = [quote(k) for k in view.join_keys]
    ts = f"f.{quote(view.source.timestamp_field)}::TIMESTAMPTZ"
    features = [quote(feature) for feature, _ in outputs]
    semi = " AND ".join(f"f.{k} = k.{k}" for k in keys)
    rows = (
        f"{source_sql(view, base_dir)} AS f "
        f"SEMI JOIN (SELECT DISTINCT {', '.join(keys)} FROM entity_df) AS k ON {semi}"
    )
    if view.source.created_timestamp_field:
        created = f"f.{quote(view.source.created_timestamp_field)}::TIMESTAMPTZ"
        known = _best_known_ctes(alias, keys, ts, created, features, rows)
    else:  # a row is known from its event time on, so the latest row by then is the best known
        known = [
            f"{alias}_known AS (SELECT {', '.join(f'f.{k}' for k in keys)}, {ts} AS __ts, {ts} AS __avail, "
            f"{', '.join(f'f.{c}' for c in features)} FROM {rows})"
        ]
    ttl_micros = view.ttl // timedelta(microseconds=1)
    entity_ts = f"e.{quote(timestamp_field)}"
    return [
        *known,
        f"{alias} AS (SELECT e.{ROW_ID}, "
        + ", ".join(
            f"CASE WHEN p.__ts >= {entity_ts} - to_microseconds({ttl_micros}) THEN p.{quote(feature)} END AS {quote(out)}"
            for feature, out in outputs
        )
        + f" FROM entity_df AS e ASOF LEFT JOIN {alias}_known AS p ON "
        + " AND ".join(f"e.{k} = p.{k}" for k in keys)
        + f" AND {entity_ts} >= p.__avail)",
    ]


def _best_known_ctes(
    alias: str, keys: Sequence[str], ts: str, created: str, features: Sequence[str], rows: str
) -> list[str]:
    """`{alias}_known`: for each moment a row became available, the best row (latest event time, then latest
    created time) of its key available by then."""
    key_list = ", ".join(keys)
    return [
        f"{alias}_rows AS (SELECT {', '.join(f'f.{k}' for k in keys)}, {ts} AS __ts, {created} AS __created, "
        f"greatest({ts}, {created}) AS __avail, {', '.join(f'f.{c}' for c in features)}, "
        f"row_number() OVER (PARTITION BY {', '.join(f'f.{k}' for k in keys)} ORDER BY {ts}, {created}) AS __rank "
        f"FROM {rows})",
        f"{alias}_best AS (SELECT {key_list}, __avail, max(__rank) OVER (PARTITION BY {key_list} ORDER BY __avail "
        f"RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __best FROM {alias}_rows)",
        f"{alias}_known AS (SELECT b.__avail, r.* EXCLUDE (__avail, __rank, __created) FROM {alias}_best AS b "
        f"JOIN {alias}_rows AS r ON {' AND '.join(f'b.{k} = r.{k}' for k in keys)} AND r.__rank = b.__best)",
    ]


def _validate(
    entity_df: pd.DataFrame,
    requests: Sequence[tuple[FeatureView, Sequence[str]]],
    timestamp_field: str,
    full_feature_names: bool,
) -> None:
    if not isinstance(entity_df, pd.DataFrame):
        raise ValidationError(f"entity_df must be a pandas DataFrame, got {type(entity_df).__name__}.")
    if timestamp_field not in entity_df.columns:
        raise ValidationError(
            f"entity_df has no timestamp column '{timestamp_field}'; add it or pass timestamp_field=... "
            f"(columns: {', '.join(map(str, entity_df.columns))})."
        )
    if not requests:
        raise ValidationError("No features requested; pass features=['view:feature', ...].")
    seen: dict[str, str] = {}
    for view, features in requests:
        missing = [k for k in view.join_keys if k not in entity_df.columns]
        if missing:
            raise ValidationError(
                f"entity_df lacks join key(s) {missing} needed by feature view '{view.name}'."
            )
        for feature in features:
            view.dtype_of(feature)
            out = feature_column(view.name, feature, full_feature_names)
            if out in seen or out in entity_df.columns:
                raise ValidationError(
                    f"Feature name '{out}' would appear twice (from '{seen.get(out, 'entity_df')}' and "
                    f"'{view.name}'); pass full_feature_names=True to prefix features with their view."
                )
            seen[out] = view.name


def _as_utc_series(series: pd.Series, name: str) -> pd.Series:
    try:
        converted = pd.to_datetime(series, utc=True)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"Column '{name}' must hold timestamps: {exc}") from exc
    if converted.isna().any():
        raise ValidationError(
            f"Column '{name}' has {int(converted.isna().sum())} missing timestamps; fill or drop them."
        )
    return converted
