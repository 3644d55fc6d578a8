"""The feature lookup log: what serving read from the online store, kept for the skew check.

Serving queues each online read as one `LoggedLookup`; the background writer turns it into one record per
feature view and entity row (the view's join keys, each feature's value, status and event time as returned,
and the lookup time by the project clock) and appends them to the `feature_lookups` dataset in day partitions. Values,
statuses and event times (epoch seconds) are JSON objects keyed by feature name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import orjson
import pandas as pd
import pyarrow as pa

from loopml.features.definitions import FeatureView, feature_column
from loopml.features.online import OnlineFeatures
from loopml.storage.offline import OfflineStore, sql_string

FEATURE_LOOKUPS = "feature_lookups"
FEATURE_SERVER = "feature_server"

LOOKUP_SCHEMA = pa.schema(
    [
        ("lookup_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),
        ("view", pa.string()),
        ("entities", pa.string()),
        ("values", pa.string()),
        ("statuses", pa.string()),
        ("event_timestamps", pa.string()),
    ]
)


@dataclass(frozen=True)
class LoggedLookup:
    """One online read, as queued by serving; `expand_lookup` makes its records in the writer thread."""

    lookup_id: str
    source: str
    now: datetime
    requests: Sequence[tuple[FeatureView, Sequence[str]]]
    found: OnlineFeatures
    full_feature_names: bool = False


def expand_lookup(lookup: LoggedLookup) -> list[dict[str, object]]:
    return lookup_records(
        lookup.lookup_id,
        lookup.source,
        lookup.now,
        lookup.requests,
        lookup.found,
        full_feature_names=lookup.full_feature_names,
    )


def lookup_records(
    lookup_id: str,
    source: str,
    now: datetime,
    requests: Sequence[tuple[FeatureView, Sequence[str]]],
    found: OnlineFeatures,
    *,
    full_feature_names: bool = False,
) -> list[dict[str, object]]:
    """One log record per view and entity row of an online read (`source`: an endpoint or the feature server).

    Raises orjson.JSONEncodeError for values JSON cannot hold (integers beyond 64 bits).
    """
    records = []
    n_rows = len(next(iter(found.entities.values()), []))
    for view, features in requests:
        columns = {f: feature_column(view.name, f, full_feature_names) for f in features}
        for i in range(n_rows):
            records.append(
                {
                    "lookup_id": lookup_id,
                    "ts": now,
                    "source": source,
                    "view": view.name,
                    "entities": orjson.dumps({k: found.entities[k][i] for k in view.join_keys}).decode(),
                    "values": orjson.dumps({f: found.values[c][i] for f, c in columns.items()}).decode(),
                    "statuses": orjson.dumps({f: found.statuses[c][i] for f, c in columns.items()}).decode(),
                    "event_timestamps": orjson.dumps(
                        {f: found.event_timestamps[c][i] for f, c in columns.items()}
                    ).decode(),
                }
            )
    return records


def read_lookups(
    offline: OfflineStore, start: datetime, end: datetime, *, limit: int | None = None
) -> pd.DataFrame:
    """Logged lookups with start <= ts <= end, oldest first; only the day partitions in range are read.

    With `limit`, a uniform random sample of at most that many records (repeatable) is returned instead.
    """
    files = _day_globs(offline, start, end)
    if not files:
        return pd.DataFrame(columns=LOOKUP_SCHEMA.names)
    sources = ", ".join(sql_string(f) for f in files)
    # A sample clause applies before the WHERE of its own SELECT, so the window is filtered one level down.
    sample = f"USING SAMPLE reservoir({int(limit)} ROWS) REPEATABLE (7)" if limit is not None else ""
    with offline.connect() as conn:
        return conn.execute(
            f"SELECT * FROM (SELECT * FROM read_parquet([{sources}], hive_partitioning=false, "
            f"union_by_name=true) WHERE ts >= ? AND ts <= ?) {sample} ORDER BY ts, lookup_id, view",
            [start, end],
        ).df()


def count_lookups(offline: OfflineStore, start: datetime, end: datetime) -> int:
    """How many lookup records have start <= ts <= end."""
    files = _day_globs(offline, start, end)
    if not files:
        return 0
    sources = ", ".join(sql_string(f) for f in files)
    with offline.connect() as conn:
        row = conn.execute(
            f"SELECT count(*) FROM read_parquet([{sources}], hive_partitioning=false, union_by_name=true) "
            "WHERE ts >= ? AND ts <= ?",
            [start, end],
        ).fetchone()
    return int(row[0]) if row else 0


def _day_globs(offline: OfflineStore, start: datetime, end: datetime) -> list[str]:
    """Globs of the `date=` partitions that exist between the days of start and end."""
    directory = offline.dataset_dir(FEATURE_LOOKUPS)
    globs = []
    day: date = start.astimezone(UTC).date()
    while day <= end.astimezone(UTC).date():
        partition = directory / f"date={day.isoformat()}"
        if any(partition.glob("*.parquet")):
            globs.append(str(partition / "*.parquet"))
        day += timedelta(days=1)
    return globs
