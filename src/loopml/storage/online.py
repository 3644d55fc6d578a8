"""OnlineStore: the latest value per entity key, read in microseconds while serving.

Rows live under a namespace (a feature view, later a prediction cache). Writes are last-write-wins by event
time (ties by created time), so a late or replayed batch never overwrites fresher values. Two backends share
this contract: SQLite (embedded default) and Redis (`online.url: redis://host:6379/0`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from loopml.errors import ConfigError, StoreUnavailableError

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


class OnlineStore(Protocol):
    """What feature serving needs from an online store."""

    def write(self, namespace: str, rows: Iterable[tuple[str, float, float, dict[str, Any]]]) -> int: ...

    def read(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], OnlineRow]: ...

    def count(self, namespace: str) -> int: ...

    def close(self) -> None: ...


def open_online_store(url: str, *, key_prefix: str = "loopml:") -> OnlineStore:
    """The backend named by `url`: sqlite:///path or redis://host:port/db."""
    if url.startswith("sqlite:///"):
        return SQLiteOnlineStore(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisOnlineStore(url, key_prefix=key_prefix)
    raise ConfigError(
        f"Online store URL '{url}' is not supported; use sqlite:///path/online.db or redis://host:6379/0."
    )


class SQLiteOnlineStore:
    """SQLite-backed key/value store with one connection per thread."""

    def __init__(self, url: str) -> None:
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


# Last write wins by (event time, created time), decided inside Redis so concurrent writers cannot race.
_REDIS_UPSERT = """
local current = redis.call('HMGET', KEYS[1], 'e', 'c')
if current[1] then
    local event, created = tonumber(ARGV[1]), tonumber(ARGV[2])
    local old_event, old_created = tonumber(current[1]), tonumber(current[2])
    if event < old_event or (event == old_event and created < old_created) then
        return 0
    end
end
redis.call('HSET', KEYS[1], 'e', ARGV[1], 'c', ARGV[2], 'v', ARGV[3])
return 1
"""
REDIS_BATCH = 1000


class RedisOnlineStore:
    """Redis-backed store: one hash per (namespace, entity key) holding event time, created time and values.

    Keys are `{key_prefix}{namespace}:{entity key}`; namespaces are identifiers (no ':'), so keys never collide.
    Reads of many keys are one pipelined round trip.
    """

    def __init__(self, url: str, *, key_prefix: str = "loopml:") -> None:
        try:
            import redis
        except ImportError as exc:
            raise ConfigError(
                f"Online store URL '{url}' needs the redis client: pip install 'loopml[redis]'."
            ) from exc
        self.url = url
        self.key_prefix = key_prefix
        self.client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
        self._upsert = self.client.register_script(_REDIS_UPSERT)
        self._errors = (redis.ConnectionError, redis.TimeoutError)

    def write(self, namespace: str, rows: Iterable[tuple[str, float, float, dict[str, Any]]]) -> int:
        written = 0
        batch: list[tuple[str, float, float, dict[str, Any]]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == REDIS_BATCH:
                written += self._write_batch(namespace, batch)
                batch = []
        return written + (self._write_batch(namespace, batch) if batch else 0)

    def read(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], OnlineRow]:
        if not keys:
            return {}
        pipeline = self.client.pipeline(transaction=False)
        for namespace, key in keys:
            pipeline.hmget(self._key(namespace, key), "e", "c", "v")
        replies = self._run(pipeline.execute)
        return {
            (namespace, key): OnlineRow(float(event), float(created), orjson.loads(payload))
            for (namespace, key), (event, created, payload) in zip(keys, replies, strict=True)
            if event is not None
        }

    def count(self, namespace: str) -> int:
        pattern = self._key(namespace, "*")
        return sum(1 for _ in self._run(lambda: list(self.client.scan_iter(match=pattern, count=1000))))

    def clear(self) -> None:
        """Delete every key under this store's prefix (tests, resets)."""
        keys = self._run(lambda: list(self.client.scan_iter(match=f"{self.key_prefix}*", count=1000)))
        for start in range(0, len(keys), REDIS_BATCH):
            self.client.delete(*keys[start : start + REDIS_BATCH])

    def close(self) -> None:
        self.client.close()

    def _write_batch(self, namespace: str, rows: list[tuple[str, float, float, dict[str, Any]]]) -> int:
        pipeline = self.client.pipeline(transaction=False)
        for key, event_ts, created_ts, values in rows:
            payload = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
            self._upsert(
                keys=[self._key(namespace, key)],
                args=[repr(float(event_ts)), repr(float(created_ts)), payload],
                client=pipeline,
            )
        self._run(pipeline.execute)
        return len(rows)

    def _key(self, namespace: str, entity_key: str) -> str:
        return f"{self.key_prefix}{namespace}:{entity_key}"

    def _run(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._errors as exc:
            raise StoreUnavailableError(
                f"Online store {self.url} is unreachable ({exc}); check that Redis is running and the URL in "
                "loopml.yaml is right."
            ) from exc
