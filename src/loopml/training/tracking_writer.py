"""The tracker's background writer: queued metric, param and tag values go to the database in batches.

Callers append to a bounded in-memory queue and return; one thread per tracker drains it, one transaction per
batch, and keeps run_latest_metrics up to date. A full queue makes the caller wait for room rather than drop a
value it was told was taken, or raise StoreUnavailableError while the database is failing. Values the database
refuses for good are raised by the next put or flush. Interpreter exit flushes every live writer.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from loopml.clock import as_utc
from loopml.errors import LoopmlError, StoreUnavailableError, ValidationError
from loopml.storage.metadata import MetadataStore
from loopml.training.tables import run_latest_metrics, run_metrics, run_params, run_tags

logger = logging.getLogger(__name__)

# Queued values are (kind, run_id, key, value, step, timestamp); step and timestamp are a metric's only.
METRIC, PARAM, TAG = 0, 1, 2
_KIND_NAMES = {METRIC: "metric", PARAM: "param", TAG: "tag"}


@dataclass
class _FlushRequest:
    remaining: int = 0  # values still to write before this request is answered
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


_LIVE_WRITERS: weakref.WeakSet[TrackingWriter] = weakref.WeakSet()


class TrackingWriter:
    """Drains queued metric, param and tag values into the metadata store from a thread of its own."""

    def __init__(
        self,
        metadata: MetadataStore,
        batch_size: int,
        flush_seconds: float,
        max_queue: int,
        idle_seconds: float,
    ) -> None:
        self.metadata = metadata
        self.batch_size, self.flush_seconds = batch_size, flush_seconds
        self.max_queue, self.idle_seconds = max_queue, idle_seconds
        self._items: collections.deque[tuple[Any, ...]] = collections.deque()  # thread-safe append/popleft
        self._requests: collections.deque[_FlushRequest] = collections.deque()
        self._wake = threading.Event()
        self._room = threading.Condition()
        self._lock = threading.Lock()  # guards starting and ending the thread
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None  # the writer thread's own
        self._stopping = False
        self.error: LoopmlError | None = None  # values refused for good, not yet reported to a caller
        self.failing: str | None = None  # the store's error while writes keep failing
        _LIVE_WRITERS.add(self)

    # callers' side

    def put(self, item: tuple[Any, ...]) -> None:
        if self.error is not None:
            self.raise_error()
        if len(self._items) >= self.max_queue:
            self._wait_for_room(1)
        self._items.append(item)
        if self._thread is None:
            self._ensure_thread()
        if len(self._items) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def put_many(self, items: list[tuple[Any, ...]]) -> None:
        if self.error is not None:
            self.raise_error()
        if not items:
            return
        if len(self._items) + len(items) > self.max_queue:
            self._wait_for_room(len(items))
        self._items.extend(items)
        if self._thread is None:
            self._ensure_thread()
        if len(self._items) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def raise_error(self) -> None:
        error, self.error = self.error, None
        if error is not None:
            raise error

    def flush(self, timeout: float | None) -> None:
        if self._thread is None and not self._items:
            self.raise_error()
            return
        request = _FlushRequest()
        self._requests.append(request)
        self._ensure_thread()
        self._wake.set()
        if not request.done.wait(timeout):
            raise StoreUnavailableError(
                f"Tracking values were not written to {self._url()} within {timeout} s "
                f"({len(self._items)} still queued); check the metadata store."
            )
        self.raise_error()
        if request.error is not None:
            raise StoreUnavailableError(
                f"Tracking values could not be written to {self._url()}: {request.error} They are kept in memory "
                "and retried; fix the metadata store, then flush again."
            )

    def close(self, timeout: float | None) -> None:
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                thread = self._thread
                self._stopping = thread is not None
            if thread is not None:
                self._wake.set()
                thread.join(timeout)
            self._stopping = False

    def _wait_for_room(self, count: int) -> None:
        """Block until `count` more values fit: never drop what the caller believes was taken."""
        self._ensure_thread()
        self._wake.set()
        with self._room:
            while len(self._items) + count > max(self.max_queue, count):
                if self.failing is not None:
                    raise StoreUnavailableError(
                        f"The tracking queue is full ({len(self._items)} values) because writing to {self._url()} "
                        f"fails: {self.failing} This value was not taken; the queued ones are retried."
                    )
                self._room.wait(0.1)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="loopml-tracking-writer", daemon=True)
                self._thread.start()

    def _url(self) -> str:
        return self.metadata.engine.url.render_as_string(hide_password=True)

    # writer's side

    def _run(self) -> None:
        pending: list[tuple[Any, ...]] = []  # taken from the queue, not yet written
        waiting: list[_FlushRequest] = []
        backoff = 0.0
        last_work = time.monotonic()
        while True:
            if not self._requests and not self._stopping:
                if pending:
                    timeout = backoff
                elif self._items:
                    timeout = self.flush_seconds
                else:
                    timeout = max(0.0, last_work + self.idle_seconds - time.monotonic())
                self._wake.wait(timeout)
            self._wake.clear()
            while self._requests:
                request = self._requests.popleft()
                request.remaining = len(pending) + len(self._items)
                waiting.append(request)
            error = None
            while pending or self._items:
                last_work = time.monotonic()
                if not pending:
                    pending = self._take()
                taken = len(pending)
                pending, error = self._write(pending)
                for request in waiting:
                    request.remaining -= taken - len(pending)
                with self._room:
                    self._room.notify_all()
                if error is not None:
                    break
                for request in [r for r in waiting if r.remaining <= 0]:
                    request.done.set()
                    waiting.remove(request)
                if not (waiting or self._stopping) and len(self._items) < self.batch_size:
                    break
            if error is None:
                self.failing, backoff = None, 0.0
            else:
                self.failing, backoff = error, min(max(backoff * 2, 0.1), 5.0)
            for request in waiting:
                request.error = error
                request.done.set()
            waiting = []
            if self._stopping:
                self._lost_on_exit(len(pending) + len(self._items))
                return
            idle = time.monotonic() - last_work >= self.idle_seconds
            if idle and not (pending or self._items or self._requests) and self._exit():
                return

    def _exit(self) -> bool:
        """End the idle thread, unless a caller queued something meanwhile (then carry on)."""
        with self._lock:
            if self._items or self._requests:
                return False
            self._thread = None
        self._disconnect()
        if self._items or self._requests:  # a caller that saw the old thread after the check above
            with self._lock:
                if self._thread is None:
                    self._thread = threading.current_thread()
                    return False
        return True

    def _lost_on_exit(self, count: int) -> None:
        self._disconnect()
        with self._lock:
            self._thread = None
        if count:
            logger.error(
                "%d tracking values were never written to %s (%s) and are lost",
                count,
                self._url(),
                self.failing,
            )

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction on the writer's own connection, kept between batches: a new SQLite connection per
        batch would start with a cold page cache and cost more than the batch itself."""
        if self._conn is None:
            try:
                self._conn = self.metadata.engine.connect()
            except (OperationalError, InterfaceError) as exc:
                raise StoreUnavailableError(f"cannot connect ({exc.orig}).") from exc
        try:
            with self._conn.begin():
                yield self._conn
        except (OperationalError, InterfaceError) as exc:
            self._disconnect()
            raise StoreUnavailableError(f"{type(exc.orig).__name__}: {exc.orig}.") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                self._disconnect()
            raise

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except DBAPIError:
                logger.debug("closing the tracking writer's connection failed", exc_info=True)

    def _take(self) -> list[tuple[Any, ...]]:
        items, taken = self._items, []
        for _ in range(min(self.batch_size, len(items))):
            taken.append(items.popleft())
        return taken

    def _write(self, items: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], str | None]:
        """Write a batch in one transaction; returns what is left to retry and the store's error.

        When the database refuses the batch itself (not a failing store), each run's values are written in a
        transaction of their own, so one run's bad values do not hold the others back.
        """
        try:
            with self._transaction() as conn:
                conflicts = _write_batch(conn, items)
        except StoreUnavailableError as exc:
            logger.warning("Writing %d tracking values failed (%s); retrying", len(items), exc)
            return items, str(exc)
        except Exception:
            return self._write_per_run(items)
        self._refused(conflicts)
        return [], None

    def _write_per_run(self, items: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], str | None]:
        by_run: dict[str, list[tuple[Any, ...]]] = {}
        for item in items:
            by_run.setdefault(item[1], []).append(item)
        remaining: list[tuple[Any, ...]] = []
        error = None
        for run_id, values in by_run.items():
            if error is not None:
                remaining.extend(values)
                continue
            try:
                with self._transaction() as conn:
                    conflicts = _write_batch(conn, values)
            except StoreUnavailableError as exc:
                remaining.extend(values)
                error = str(exc)
                continue
            except Exception as exc:
                kinds = sorted({_KIND_NAMES[v[0]] for v in values})
                logger.error("%d tracking values of run %s refused: %s", len(values), run_id, exc)
                self._report(
                    f"{len(values)} {'/'.join(kinds)} value(s) of run '{run_id}' were refused by the database and "
                    f"are lost ({type(exc).__name__}: {str(exc).splitlines()[0]}). Was the run deleted?"
                )
                continue
            self._refused(conflicts)
        return remaining, error

    def _refused(self, conflicts: list[str]) -> None:
        if conflicts:
            self._report(
                "Params already set to other values (by another process) were not changed: "
                + "; ".join(conflicts[:5])
                + ". Params are immutable: use another key or a tag."
            )

    def _report(self, message: str) -> None:
        previous = self.error
        text_message = message if previous is None else f"{previous} Also: {message}"
        self.error = ValidationError(text_message)


def _write_batch(conn: Connection, items: list[tuple[Any, ...]]) -> list[str]:
    """Insert metric history, upsert latest values and tags, insert params; returns param conflicts."""
    history: list[tuple[str, str, int, float, Any]] = []
    latest: dict[tuple[str, str], tuple[int, datetime, float]] = {}
    params: dict[tuple[str, str], str] = {}
    tags: dict[tuple[str, str], str] = {}
    stored_time = _stored_time(conn.dialect.name)
    for kind, run_id, key, value, step, ts in items:
        if kind == METRIC:
            history.append((run_id, key, step, value, stored_time(ts)))
            current = latest.get((run_id, key))
            if current is None or (step, ts) >= current[:2]:
                latest[(run_id, key)] = (step, ts, value)
        elif kind == PARAM:
            params.setdefault((run_id, key), value)
        else:
            tags[(run_id, key)] = value
    if history:
        # The bulk of every batch: straight to the driver, skipping per-row bind processing (a third of the
        # writer's time, all of it holding the GIL the training loop needs).
        marks = ", ".join(["?" if conn.dialect.paramstyle == "qmark" else "%s"] * 5)
        conn.exec_driver_sql(
            f"INSERT INTO {run_metrics.name} (run_id, key, step, value, ts) VALUES ({marks})", history
        )
    if latest:
        _upsert_latest(conn, latest)
    if tags:
        statement = _insert(conn, run_tags)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["run_id", "key"], set_={"value": statement.excluded.value}
            ),
            [{"run_id": r, "key": k, "value": v} for (r, k), v in tags.items()],
        )
    if not params:
        return []
    conn.execute(
        _insert(conn, run_params).on_conflict_do_nothing(index_elements=["run_id", "key"]),
        [{"run_id": r, "key": k, "value": v} for (r, k), v in params.items()],
    )
    stored = conn.execute(
        select(run_params.c.run_id, run_params.c.key, run_params.c.value).where(
            tuple_(run_params.c.run_id, run_params.c.key).in_(list(params))
        )
    ).all()
    return [
        f"run '{r}' param '{k}' is {v!r}, not {params[(r, k)]!r}" for r, k, v in stored if params[(r, k)] != v
    ]


def _stored_time(dialect: str) -> Any:
    """Aware datetime → what UTCDateTime would bind: naive UTC; on SQLite, SQLAlchemy's text form of it."""

    def naive(ts: datetime) -> datetime:
        return ts.replace(tzinfo=None) if ts.tzinfo is UTC else as_utc(ts).replace(tzinfo=None)

    if dialect == "sqlite":
        return lambda ts: naive(ts).isoformat(" ", "microseconds")
    return naive


def _upsert_latest(conn: Connection, latest: dict[tuple[str, str], tuple[int, datetime, float]]) -> None:
    """Keep the value with the highest step (the latest time among equal steps) per run and key."""
    statement = _insert(conn, run_latest_metrics)
    new, old = statement.excluded, run_latest_metrics.c
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["run_id", "key"],
            set_={"value": new.value, "step": new.step, "ts": new.ts},
            where=or_(new.step > old.step, and_(new.step == old.step, new.ts >= old.ts)),
        ),
        [
            {"run_id": r, "key": k, "value": value, "step": step, "ts": ts}
            for (r, k), (step, ts, value) in latest.items()
        ],
    )


def _insert(conn: Connection, table: Any) -> Any:
    """INSERT with ON CONFLICT for the connection's database (SQLite and PostgreSQL spell it alike)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _forget_in_child() -> None:
    """A forked child (a data-loader worker, say) shares nothing with its parent's writers: the values queued
    are the parent's to write, and the connection is the parent's socket (closing it here would break it)."""
    for writer in list(_LIVE_WRITERS):
        writer._items.clear()
        writer._requests.clear()
        writer._lock = threading.Lock()
        writer._room = threading.Condition()
        writer._wake = threading.Event()
        writer._thread = None
        writer._conn = None


os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _flush_at_exit() -> None:
    """Write what every live tracker still holds before the interpreter exits."""
    for writer in list(_LIVE_WRITERS):
        try:
            writer.close(30.0)
        except LoopmlError as exc:
            logger.error("Tracking values lost at exit: %s", exc)
