"""OnlineStore: the latest value per entity key, read in microseconds while serving.

Rows live under a namespace (a feature view, later a prediction cache). Writes are last-write-wins by event
time (ties by created time), so a late or replayed batch never overwrites fresher values. Aggregation views
keep instead an event log per key (event time and values), trimmed to their longest window. Two backends
share this contract: SQLite (embedded default) and Redis (`online.url: redis://host:6379/0`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
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

_EVENTS_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS online_events (
    namespace TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    event_ts REAL NOT NULL,
    payload BLOB NOT NULL
)
""",
    "CREATE INDEX IF NOT EXISTS online_events_by_key ON online_events (namespace, entity_key, event_ts)",
)

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


Event = tuple[float, dict[str, Any]]  # (event time in seconds since the epoch, values)


@dataclass(frozen=True)
class EventQuery:
    """The events of one key with since <= event time < until."""

    namespace: str
    key: str
    since: float
    until: float


@dataclass
class Lookup:
    """What one round trip read: latest rows, and event logs (oldest first)."""

    rows: dict[tuple[str, str], OnlineRow] = field(default_factory=dict)
    events: dict[tuple[str, str], list[Event]] = field(default_factory=dict)


@dataclass(frozen=True)
class EventWrite:
    """Events of one or more keys; `replace` = (start, end) first drops those keys' stored events in that
    range (a re-materialised window never counts twice), and events before `keep_from` are trimmed."""

    events: Sequence[tuple[str, float, dict[str, Any]]]
    replace: tuple[float, float] | None = None
    keep_from: float | None = None


class OnlineStore(Protocol):
    """What feature serving needs from an online store."""

    def write(self, namespace: str, rows: Iterable[tuple[str, float, float, dict[str, Any]]]) -> int: ...

    def read(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], OnlineRow]: ...

    def lookup(self, keys: Sequence[tuple[str, str]], events: Sequence[EventQuery] = ()) -> Lookup: ...

    async def alookup(self, keys: Sequence[tuple[str, str]], events: Sequence[EventQuery] = ()) -> Lookup:
        """`lookup` for the server's event loop: never blocks it on the network."""
        ...

    def write_events(self, namespace: str, batch: EventWrite) -> int: ...

    def count(self, namespace: str) -> int: ...

    def close(self) -> None: ...

    async def aclose(self) -> None:
        """Close what `alookup` opened, from the event loop it ran on."""
        ...


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
        conn = self._connection()
        for statement in (_SCHEMA, *_EVENTS_SCHEMA):
            conn.execute(statement)

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

    def write_events(self, namespace: str, batch: EventWrite) -> int:
        """Add events to their keys' logs in one transaction; returns how many were added."""
        keys = list(dict.fromkeys(key for key, _, _ in batch.events))
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if batch.replace is not None:
                conn.executemany(
                    "DELETE FROM online_events WHERE namespace = ? AND entity_key = ? AND event_ts BETWEEN ? AND ?",
                    [(namespace, key, *batch.replace) for key in keys],
                )
            conn.executemany(
                "INSERT INTO online_events (namespace, entity_key, event_ts, payload) VALUES (?, ?, ?, ?)",
                [
                    (namespace, key, float(ts), orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY))
                    for key, ts, values in batch.events
                ],
            )
            if batch.keep_from is not None:
                conn.executemany(
                    "DELETE FROM online_events WHERE namespace = ? AND entity_key = ? AND event_ts < ?",
                    [(namespace, key, batch.keep_from) for key in keys],
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return len(batch.events)

    def lookup(self, keys: Sequence[tuple[str, str]], events: Sequence[EventQuery] = ()) -> Lookup:
        """Latest rows of `keys` and the event logs asked for, in one read transaction."""
        if not events:
            return Lookup(rows=self.read(keys))
        conn = self._connection()
        conn.execute("BEGIN")
        try:
            found = Lookup(rows=self.read(keys))
            for query in events:
                cursor = conn.execute(
                    "SELECT event_ts, payload FROM online_events WHERE namespace = ? AND entity_key = ? "
                    "AND event_ts >= ? AND event_ts < ? ORDER BY event_ts",
                    (query.namespace, query.key, query.since, query.until),
                )
                found.events[(query.namespace, query.key)] = [(ts, orjson.loads(p)) for ts, p in cursor]
        finally:
            conn.execute("COMMIT")
        return found

    async def alookup(self, keys: Sequence[tuple[str, str]], events: Sequence[EventQuery] = ()) -> Lookup:
        """`lookup`, run inline: a read of a local file in WAL mode never waits for writers, and takes
        microseconds, less than handing it to a thread would."""
        return self.lookup(keys, events)

    def read(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], OnlineRow]:
        """Fetch many (namespace, entity_key) pairs in one query; absent keys are left out."""
        if not keys:
            return {}
        placeholders = ",".join(["(?, ?)"] * len(keys))
        params = [part for key in keys for part in key]
        conn = self._connection()
        # A join from the key list (not a row-value IN, which SQLite plans as a full scan) uses the primary key.
        cursor = conn.execute(
            f"WITH k(ns, key) AS (VALUES {placeholders}) "
            "SELECT v.namespace, v.entity_key, v.event_ts, v.created_ts, v.payload FROM k CROSS JOIN online_values AS v "
            "ON v.namespace = k.ns AND v.entity_key = k.key",
            params,
        )
        return {
            (namespace, key): OnlineRow(event_ts, created_ts, orjson.loads(payload))
            for namespace, key, event_ts, created_ts, payload in cursor
        }

    def count(self, namespace: str) -> int:
        """Keys holding a row or an event log in `namespace`."""
        row = (
            self._connection()
            .execute(
                "SELECT (SELECT count(*) FROM online_values WHERE namespace = ?) + "
                "(SELECT count(DISTINCT entity_key) FROM online_events WHERE namespace = ?)",
                (namespace, namespace),
            )
            .fetchone()
        )
        return int(row[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    async def aclose(self) -> None:
        self.close()

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
_TAG_LENGTH = 16  # hex characters of random tag in front of each event log member


class RedisOnlineStore:
    """Redis-backed store: one hash per (namespace, entity key) holding event time, created time and values.

    Keys are `{key_prefix}{namespace}:{entity key}`; namespaces are identifiers (no ':'), so keys never collide.
    An event log is a sorted set by event time at `{key_prefix}{namespace}#events:{entity key}`, each member a
    random tag (so equal events stay distinct) and the JSON values. Reads of many keys, rows and event logs
    alike, are one pipelined round trip.
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
        self._async_client: Any = None  # redis.asyncio.Redis, made on first use by the event loop

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
        return self.lookup(keys).rows if keys else {}

    def lookup(self, keys: Sequence[tuple[str, str]], events: Sequence[EventQuery] = ()) -> Lookup:
        if not keys and not events:
            return Lookup()
        pipeline = self._queue_lookup(self.client.pipeline(transaction=False), keys, events)
        return self._parse_lookup(keys, events, self._run(pipeline.execute))

    async def alookup(self, keys: Sequence[tuple[str, str]], events: Sequence[EventQuery] = ()) -> Lookup:
        """`lookup` over redis.asyncio: one pipelined round trip, awaited."""
        if not keys and not events:
            return Lookup()
        if self._async_client is None:
            import redis.asyncio

            self._async_client = redis.asyncio.Redis.from_url(
                self.url, socket_connect_timeout=5, socket_timeout=30
            )
        pipeline = self._queue_lookup(self._async_client.pipeline(transaction=False), keys, events)
        try:
            replies = await pipeline.execute()
        except self._errors as exc:
            raise self._unavailable(exc) from exc
        return self._parse_lookup(keys, events, replies)

    def _queue_lookup(
        self, pipeline: Any, keys: Sequence[tuple[str, str]], events: Sequence[EventQuery]
    ) -> Any:
        for namespace, key in keys:
            pipeline.hmget(self._key(namespace, key), "e", "c", "v")
        for query in events:
            pipeline.zrangebyscore(
                self._events_key(query.namespace, query.key),
                repr(query.since),
                f"({query.until!r}",
                withscores=True,
            )
        return pipeline

    def _parse_lookup(
        self, keys: Sequence[tuple[str, str]], events: Sequence[EventQuery], replies: list[Any]
    ) -> Lookup:
        found = Lookup()
        for (namespace, key), (event, created, payload) in zip(keys, replies, strict=False):
            if event is not None:
                found.rows[(namespace, key)] = OnlineRow(float(event), float(created), orjson.loads(payload))
        for query, members in zip(events, replies[len(keys) :], strict=True):
            found.events[(query.namespace, query.key)] = [
                (float(score), orjson.loads(member[_TAG_LENGTH:])) for member, score in members
            ]
        return found

    def write_events(self, namespace: str, batch: EventWrite) -> int:
        """Add events, per key atomically (MULTI/EXEC), in batches of keys."""
        by_key: dict[str, dict[bytes, float]] = defaultdict(dict)
        for key, ts, values in batch.events:
            member = os.urandom(_TAG_LENGTH // 2).hex().encode() + orjson.dumps(
                values, option=orjson.OPT_SERIALIZE_NUMPY
            )
            by_key[key][member] = float(ts)
        keys = list(by_key)
        for start in range(0, len(keys), REDIS_BATCH):
            pipeline = self.client.pipeline(transaction=True)
            for key in keys[start : start + REDIS_BATCH]:
                name = self._events_key(namespace, key)
                if batch.replace is not None:
                    pipeline.zremrangebyscore(name, repr(batch.replace[0]), repr(batch.replace[1]))
                pipeline.zadd(name, by_key[key])
                if batch.keep_from is not None:
                    pipeline.zremrangebyscore(name, "-inf", f"({batch.keep_from!r}")
            self._run(pipeline.execute)
        return len(batch.events)

    def count(self, namespace: str) -> int:
        """Keys holding a row or an event log in `namespace`."""
        patterns = (self._key(namespace, "*"), self._events_key(namespace, "*"))
        return sum(
            len(self._run(lambda pattern=pattern: list(self.client.scan_iter(match=pattern, count=1000))))
            for pattern in patterns
        )

    def clear(self) -> None:
        """Delete every key under this store's prefix (tests, resets)."""
        keys = self._run(lambda: list(self.client.scan_iter(match=f"{self.key_prefix}*", count=1000)))
        for start in range(0, len(keys), REDIS_BATCH):
            self.client.delete(*keys[start : start + REDIS_BATCH])

    def close(self) -> None:
        self.client.close()

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None

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

    def _events_key(self, namespace: str, entity_key: str) -> str:
        return f"{self.key_prefix}{namespace}#events:{entity_key}"

    def _run(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._errors as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Online store {self.url} is unreachable ({exc}); check that Redis is running and the URL in "
            "loopml.yaml is right."
        )
