"""OnlineStore: the latest value per entity key, read in microseconds while serving.

Rows live under a namespace (a feature view, later a prediction cache). Writes are last-write-wins by event
time (ties by created time), so a late or replayed batch never overwrites fresher values.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from loopml.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_values (
    namespace TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    event_ts REAL NOT NULL,
    created_ts REAL NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (namespace, entity_key)
) WITHOUT ROWID
"""

_UPSERT = """
INSERT INTO online_values (namespace, entity_key, event_ts, created_ts, payload) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (namespace, entity_key) DO UPDATE SET
    event_ts = excluded.event_ts, created_ts = excluded.created_ts, payload = excluded.payload
WHERE (excluded.event_ts, excluded.created_ts) >= (online_values.event_ts, online_values.created_ts)
"""


@dataclass(frozen=True)
class OnlineRow:
    """One stored value set with the event time it describes (seconds since the epoch)."""

    event_ts: float
    created_ts: float
    values: dict[str, Any]


class OnlineStore:
    """SQLite-backed key/value store with one connection per thread."""

    def __init__(self, url: str) -> None:
        if not url.startswith("sqlite:///"):
            raise ConfigError(
                f"Online store URL '{url}' is not supported yet; use sqlite:///path/to/online.db."
            )
        self.url = url
        self.path = url[len("sqlite:///") :]
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connection().execute(_SCHEMA)

    def write(self, namespace: str, rows: Iterable[tuple[str, float, float, dict[str, Any]]]) -> int:
        """Upsert (entity_key, event_ts, created_ts, values) rows; returns how many were offered."""
        batch = [
            (
                namespace,
                key,
                float(event_ts),
                float(created_ts),
                orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY),
            )
            for key, event_ts, created_ts, values in rows
        ]
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_UPSERT, batch)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return len(batch)

    def read(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], OnlineRow]:
        """Fetch many (namespace, entity_key) pairs in one query; absent keys are left out."""
        if not keys:
            return {}
        placeholders = ",".join(["(?, ?)"] * len(keys))
        params = [part for key in keys for part in key]
        conn = self._connection()
        cursor = conn.execute(
            "SELECT namespace, entity_key, event_ts, created_ts, payload FROM online_values "
            f"WHERE (namespace, entity_key) IN (VALUES {placeholders})",
            params,
        )
        return {
            (namespace, key): OnlineRow(event_ts, created_ts, orjson.loads(payload))
            for namespace, key, event_ts, created_ts, payload in cursor
        }

    def count(self, namespace: str) -> int:
        row = (
            self._connection()
            .execute("SELECT count(*) FROM online_values WHERE namespace = ?", (namespace,))
            .fetchone()
        )
        return int(row[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn
