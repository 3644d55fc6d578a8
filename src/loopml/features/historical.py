"""Point-in-time correct training sets, as one set-based DuckDB query.

For each entity row and each requested view: the feature row with the same join keys whose event time is at
or before the entity row's time and no older than the view's ttl, created no later than the entity row's time
(so a backfill written afterwards cannot leak into the past), the latest event time winning and ties going to
the latest created time. Entity rows with no match keep their place with nulls (a LEFT join).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import duckdb
import pandas as pd

from loopml.errors import ValidationError
from loopml.features.definitions import FeatureView
from loopml.storage.offline import sql_string

ROW_ID = "__loopml_row"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def source_sql(view: FeatureView, base_dir: Path) -> str:
    """A DuckDB table expression over the view's Parquet files."""
    path = Path(view.source.path)
    if not path.is_absolute():
        path = base_dir / path
    return f"read_parquet({sql_string(path.as_posix())}, union_by_name=true)"


def duckdb_connection() -> duckdb.DuckDBPyConnection:
    """DuckDB with UTC as its zone, so naive timestamps in sources are read as UTC."""
    conn = duckdb.connect()
    conn.execute("SET TimeZone='UTC'")
    return conn


def get_historical_features(
    entity_df: pd.DataFrame,
    requests: Sequence[tuple[FeatureView, Sequence[str]]],
    *,
    base_dir: Path,
    timestamp_field: str = "event_timestamp",
    full_feature_names: bool = False,
) -> pd.DataFrame:
    """Join the requested features onto `entity_df` as of each row's timestamp; row order is kept."""
    _validate(entity_df, requests, timestamp_field, full_feature_names)
    entity = entity_df.copy()
    entity[timestamp_field] = _as_utc_series(entity[timestamp_field], timestamp_field)
    entity[ROW_ID] = range(len(entity))

    ctes, selects, joins = [], [], []
    for index, (view, features) in enumerate(requests):
        alias = f"v{index}"
        outputs = [(f, f"{view.name}__{f}" if full_feature_names else f) for f in features]
        ctes.append(f"{alias} AS ({_view_query(view, outputs, base_dir, timestamp_field)})")
        selects.extend(f"{alias}.{quote(out)}" for _, out in outputs)
        joins.append(f"LEFT JOIN {alias} USING ({ROW_ID})")

    sql = (
        f"WITH {', '.join(ctes)} "
        f"SELECT e.*, {', '.join(selects)} FROM entity_df AS e {' '.join(joins)} ORDER BY e.{ROW_ID}"
    )
    with duckdb_connection() as conn:
        conn.register("entity_df", entity)
        result = conn.execute(sql).df()
    result = result.drop(columns=[ROW_ID])
    result[timestamp_field] = _as_utc_series(result[timestamp_field], timestamp_field)
    return result


def _view_query(
    view: FeatureView, outputs: Sequence[tuple[str, str]], base_dir: Path, timestamp_field: str
) -> str:
    ts = quote(view.source.timestamp_field)
    entity_ts = f"e.{quote(timestamp_field)}"
    key_match = " AND ".join(f"f.{quote(k)} = e.{quote(k)}" for k in view.join_keys)
    ttl_micros = view.ttl // timedelta(microseconds=1)
    order = f"f.{ts} DESC"
    created_filter = ""
    if view.source.created_timestamp_field:
        created = quote(view.source.created_timestamp_field)
        order += f", f.{created} DESC"
        created_filter = f"AND f.{created}::TIMESTAMPTZ <= {entity_ts}"
    columns = ", ".join(f"f.{quote(feature)} AS {quote(out)}" for feature, out in outputs)
    return (
        f"SELECT e.{ROW_ID}, {columns} FROM entity_df AS e JOIN {source_sql(view, base_dir)} AS f "
        f"ON {key_match} AND f.{ts}::TIMESTAMPTZ <= {entity_ts} "
        f"AND f.{ts}::TIMESTAMPTZ >= {entity_ts} - to_microseconds({ttl_micros}) {created_filter} "
        f"QUALIFY row_number() OVER (PARTITION BY e.{ROW_ID} ORDER BY {order}) = 1"
    )


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
            out = f"{view.name}__{feature}" if full_feature_names else feature
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
