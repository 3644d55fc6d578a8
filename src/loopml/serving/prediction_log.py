"""The prediction log and labels: written in batches by a background thread, read with DuckDB.

The serving hot path only appends a record to a bounded queue. A writer thread turns batches into Parquet files
partitioned by day; `flush()` waits until everything queued so far is on disk (or says why it is not), and
`close()` flushes before the server exits. A full queue refuses the record and counts the drop.

Readers see served predictions only unless asked: a shadow route's predictions are logged with
`served = false`. Files written before the `route` and `served` columns existed read as served, route null.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from loopml.clock import as_utc
from loopml.errors import StoreUnavailableError
from loopml.storage.offline import OfflineStore, quote

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions"
LABELS = "labels"

PREDICTION_SCHEMA = pa.schema(
    [
        ("prediction_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("endpoint", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("unit_id", pa.string()),
        ("entities", pa.string()),
        ("inputs", pa.string()),
        ("output", pa.float64()),
        ("latency_seconds", pa.float64()),
        ("route", pa.string()),  # the endpoint route that made it: primary, canary, a shadow or an arm
        ("served", pa.bool_()),  # false for shadow predictions, logged but never returned
        ("mirrors", pa.string()),  # a shadow prediction: the id of the served prediction of the same request
    ]
)
ERRORS = "request_errors"
ERROR_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("endpoint", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("route", pa.string()),
        ("served", pa.bool_()),  # false for a shadow route's failure
        (
            "status",
            pa.int64(),
        ),  # the HTTP status the request got (a shadow's failure: what it would have got)
        ("error", pa.string()),
    ]
)
LABEL_SCHEMA = pa.schema(
    [("prediction_id", pa.string()), ("label", pa.float64()), ("ts", pa.timestamp("us", tz="UTC"))]
)
PARTITION_FORMAT = "date=%Y-%m-%d"  # records are partitioned by their UTC day


@dataclass
class _FlushRequest:
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


TABLE_SLICE_ROWS = 64  # records converted to Arrow between two GIL hand-overs
ROOM_POLL_SECONDS = 0.005  # how often a `put` with a timeout looks for room
EXPAND_SLICE_ITEMS = 16  # queued items expanded between two GIL hand-overs
# The longest the writer waits for a moment without requests before working anyway: a server that is never
# idle still gets a 500-item batch expanded and converted in well under a second.
IDLE_WAIT_SECONDS = 0.005


class BatchWriter:
    """Appends records to an offline dataset in batches from a background thread.

    A batch is written when it holds `batch_size` records or its oldest record has waited `flush_seconds`.
    `put` only appends to a deque: the writer thread is woken when a batch is full (or by its timer), never
    per record, so a busy server does not hand the GIL to it on every request. A failed write keeps its
    records and is retried every `flush_seconds`; meanwhile the queue fills and `put` starts refusing, so
    memory stays bounded and every loss is counted. With `expand`, a queued item is turned into its records
    in the writer thread, off the caller's path; an item it cannot expand is skipped with a warning.

    With `idle` (an event a server sets while no request is in flight), the writer does its Python work
    (expanding items, converting records) in small slices, each when the server is idle or at the latest
    IDLE_WAIT_SECONDS later: a request then rarely waits for the GIL behind a batch being converted. A flush
    or a close does not wait for idle moments.
    """

    def __init__(
        self,
        offline: OfflineStore,
        dataset: str,
        schema: pa.Schema,
        *,
        batch_size: int = 500,
        flush_seconds: float = 1.0,
        max_queue: int = 100_000,
        on_drop: Callable[[], None] | None = None,
        expand: Callable[[Any], list[dict[str, Any]]] | None = None,
        idle: threading.Event | None = None,
    ) -> None:
        self.offline, self.dataset, self.schema = offline, dataset, schema
        self._expand = expand
        self._idle = idle
        self.batch_size, self.flush_seconds, self.max_queue = batch_size, flush_seconds, max_queue
        self._items: collections.deque[Any] = collections.deque()  # append/popleft are thread-safe
        self._flushes: collections.deque[_FlushRequest] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._held = 0  # records the writer thread has taken but not yet written
        self._on_drop = on_drop
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"loopml-{dataset}-writer", daemon=True)
        self._thread.start()

    def put(self, record: Any, timeout: float | None = None) -> bool:
        """Queue a record (or an item for `expand`), waiting up to `timeout` seconds for room (by default not at all).

        Returns False, and counts a drop, when the queue stayed full or the writer is closed.
        """
        if self._stopping:
            self._drop(1)
            return False
        if len(self._items) >= self.max_queue:
            deadline = time.monotonic() + (timeout or 0.0)
            while len(self._items) >= self.max_queue and time.monotonic() < deadline:
                self._wake.set()
                time.sleep(ROOM_POLL_SECONDS)
            if len(self._items) >= self.max_queue:
                self._drop(1)
                return False
        self._items.append(record)
        if len(self._items) >= self.batch_size:
            self._wake.set()
        return True

    @property
    def depth(self) -> int:
        """Items not yet on disk: queued ones plus records the writer holds (being written, or kept after a
        failed write). Read by the queue-depth gauge."""
        return len(self._items) + self._held

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every record queued before this call is written; raise if that cannot be done."""
        if not self._thread.is_alive():
            raise StoreUnavailableError(f"The {self.dataset} writer is closed; nothing more can be flushed.")
        request = _FlushRequest()
        self._flushes.append(request)
        self._wake.set()
        if not request.done.wait(timeout):
            raise StoreUnavailableError(
                f"The {self.dataset} writer did not flush within {timeout} s; check the offline store at "
                f"{self.offline.root}."
            )
        if request.error is not None:
            raise StoreUnavailableError(
                f"{self.dataset} records could not be written to {self.offline.root}: {request.error}. They are "
                "kept in memory and retried; fix the offline store (disk space, permissions)."
            )

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the thread; records still unwritten after a failed flush are logged as lost.

        Records put while closing are written too; once closed, `put` refuses. Closing twice does nothing.
        """
        if self._stopping:
            return
        try:
            self.flush(timeout)
        finally:
            self._stopping = True
            self._wake.set()
            self._thread.join(timeout)

    def _run(self) -> None:
        pending: list[dict[str, Any]] = []
        oldest = math.inf  # when the oldest pending record had arrived by
        while True:
            stopping = self._stopping
            since = time.monotonic()  # records taken after this wait arrived after this moment
            if not stopping and not self._flushes:
                self._wake.wait(
                    self.flush_seconds
                    if oldest == math.inf
                    else max(0.0, oldest + self.flush_seconds - since)
                )
            self._wake.clear()
            flushes = [
                self._flushes.popleft() for _ in range(len(self._flushes))
            ]  # before the records they cover
            error = None
            while True:
                taken = self._take(self.max_queue - len(pending))
                if taken and not pending:
                    oldest = since
                pending.extend(taken)
                self._held = len(pending)
                full = len(pending) >= self.batch_size
                if pending and (
                    flushes or stopping or full or time.monotonic() >= oldest + self.flush_seconds
                ):
                    pending, error = self._write(pending)
                    self._held = len(pending)
                    oldest = time.monotonic() if pending else math.inf
                if error is not None or not (flushes or stopping) or not self._items:
                    break
            for request in flushes:
                request.error = error
                request.done.set()
            if stopping:
                if pending or self._items:
                    lost = len(pending) + len(self._items)
                    logger.error("%d %s records were never written and are lost", lost, self.dataset)
                return

    def _take(self, room: int) -> list[dict[str, Any]]:
        """Records of up to `room` queued items (fewer when the store is failing and records pile up)."""
        records: list[dict[str, Any]] = []
        taken = 0
        while self._items and len(records) < room:
            if self._expand is not None and taken % EXPAND_SLICE_ITEMS == 0:
                self._pause()  # between slices of items: a batch of them is tens of ms of Python
            records.extend(self._records(self._items.popleft()))
            taken += 1
        return records

    def _records(self, item: Any) -> list[dict[str, Any]]:
        if self._expand is None:
            return [item]
        try:
            return self._expand(item)
        except Exception as exc:
            logger.warning("A %s item is not logged: %s", self.dataset, exc)
            return []

    def _write(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        """Write records day by day; returns the records still unwritten and the error that stopped them."""
        by_day: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            by_day.setdefault(day_partition(record["ts"]), []).append(record)
        days = list(by_day)
        for index, day in enumerate(days):
            try:
                table = self._in_slices(by_day[day])
            except (pa.ArrowException, TypeError, ValueError):
                logger.exception("Dropping %d malformed %s records", len(by_day[day]), self.dataset)
                self._drop(len(by_day[day]))
                continue
            try:
                self.offline.append(self.dataset, table, partition=day)
            except OSError as exc:
                remaining = [record for later in days[index:] for record in by_day[later]]
                logger.error("Writing %d %s records failed (%s); retrying", len(remaining), self.dataset, exc)
                return remaining, f"{type(exc).__name__}: {exc}"
        return [], None

    def _in_slices(self, records: list[dict[str, Any]]) -> pa.Table:
        """`record_table` a slice at a time, pausing between slices: converting Python values holds the GIL,
        and a request waiting behind 500 records' conversion would wait milliseconds."""
        tables = []
        for start in range(0, len(records), TABLE_SLICE_ROWS):
            self._pause()
            tables.append(record_table(records[start : start + TABLE_SLICE_ROWS], self.schema))
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def _pause(self) -> None:
        """Let requests have the GIL: wait for an idle moment when there is an `idle` event, else yield once."""
        if self._idle is None or self._stopping or self._flushes:
            time.sleep(0)
        else:
            self._idle.wait(IDLE_WAIT_SECONDS)

    def _drop(self, count: int) -> None:
        self.dropped += count
        if self._on_drop is not None:
            for _ in range(count):
                self._on_drop()


def day_partition(ts: datetime) -> str:
    """The partition folder of a record: its UTC day (a naive time is taken to be UTC)."""
    return as_utc(ts).strftime(PARTITION_FORMAT)


def append_by_day(offline: OfflineStore, dataset: str, table: pa.Table) -> int:
    """Append a table with a UTC `ts` column as one file per day, in the partitions the writer uses;
    returns the rows written."""
    if table.num_rows == 0:
        return 0
    days = pc.strftime(table["ts"], format=PARTITION_FORMAT)
    for day in pc.unique(days).to_pylist():
        offline.append(dataset, table.filter(pc.equal(days, day)), partition=day)
    return table.num_rows


def record_table(records: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Records as a table, built column by column (a third of `Table.from_pylist`'s time, all of it holding
    the GIL that requests wait for); a field a record lacks is null."""
    return pa.table({name: [record.get(name) for record in records] for name in schema.names}, schema=schema)


def read_predictions(
    offline: OfflineStore,
    endpoint: str,
    start: datetime,
    end: datetime,
    *,
    include_shadow: bool = False,
    route: str | None = None,
) -> pd.DataFrame:
    """Predictions of an endpoint with start <= ts < end, oldest first: the served ones, and with
    `include_shadow` the shadow routes' too; `route` keeps one route's only."""
    if not offline.exists(PREDICTIONS):
        return pd.DataFrame(columns=PREDICTION_SCHEMA.names)
    where, params = _prediction_filter("", endpoint, start, end, include_shadow, route)
    with offline.connect() as conn:
        return conn.execute(
            f"SELECT * FROM {_predictions(offline)} WHERE {where} ORDER BY ts, prediction_id", params
        ).df()


def read_request_errors(
    offline: OfflineStore, endpoint: str, start: datetime, end: datetime, *, include_shadow: bool = False
) -> pd.DataFrame:
    """Requests of an endpoint that failed after a route was chosen (so a version is to blame), oldest first."""
    if not offline.exists(ERRORS):
        return pd.DataFrame(columns=ERROR_SCHEMA.names)
    where = "endpoint = ? AND ts >= ? AND ts < ?" + ("" if include_shadow else " AND served")
    with offline.connect() as conn:
        return conn.execute(
            f"SELECT * FROM {offline.scan(ERRORS)} WHERE {where} ORDER BY ts", [endpoint, start, end]
        ).df()


def read_labelled_predictions(
    offline: OfflineStore,
    endpoint: str,
    start: datetime,
    end: datetime,
    *,
    labels_until: datetime,
    include_shadow: bool = False,
    route: str | None = None,
    keep_unlabelled: bool = False,
) -> pd.DataFrame:
    """Predictions in [start, end) joined to their latest label recorded no later than `labels_until`;
    served ones only unless `include_shadow`, one route's only with `route`; with `keep_unlabelled` the
    predictions without a label too (label null), for label coverage."""
    if not offline.exists(PREDICTIONS) or (not offline.exists(LABELS) and not keep_unlabelled):
        return pd.DataFrame(columns=[*PREDICTION_SCHEMA.names, "label"])
    if not offline.exists(LABELS):
        predictions = read_predictions(
            offline, endpoint, start, end, include_shadow=include_shadow, route=route
        )
        return predictions.assign(label=pd.Series([None] * len(predictions), dtype=float))
    where, params = _prediction_filter("p.", endpoint, start, end, include_shadow, route)
    join = "LEFT JOIN" if keep_unlabelled else "JOIN"
    with offline.connect() as conn:
        return conn.execute(
            f"""
            WITH latest AS (
                SELECT prediction_id, label FROM {offline.scan(LABELS)}
                WHERE ts <= ?
                QUALIFY row_number() OVER (PARTITION BY prediction_id ORDER BY ts DESC) = 1
            )
            SELECT p.*, latest.label
            FROM {_predictions(offline)} AS p
            {join} latest USING (prediction_id)
            WHERE {where}
            ORDER BY p.ts, p.prediction_id
            """,
            [labels_until, *params],
        ).df()


_SQL_TYPES = {
    pa.string(): "VARCHAR",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
}


def _predictions(offline: OfflineStore) -> str:
    """The prediction log with every column of PREDICTION_SCHEMA, whichever schema its files were written
    with: a column no file has reads as null, and `served` null (files older than the column) as true."""
    typed = ", ".join(f"NULL::{_SQL_TYPES[f.type]} AS {quote(f.name)}" for f in PREDICTION_SCHEMA)
    return (
        f"(SELECT * REPLACE (coalesce(served, true) AS served) FROM ("
        f"SELECT {typed} WHERE false UNION ALL BY NAME SELECT * FROM {offline.scan(PREDICTIONS)}))"
    )


def _prediction_filter(
    prefix: str, endpoint: str, start: datetime, end: datetime, include_shadow: bool, route: str | None
) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) shared by the readers."""
    conditions = [f"{prefix}endpoint = ?", f"{prefix}ts >= ?", f"{prefix}ts < ?"]
    params: list[Any] = [endpoint, start, end]
    if not include_shadow:
        conditions.append(f"{prefix}served")
    if route is not None:
        conditions.append(f"{prefix}route = ?")
        params.append(route)
    return " AND ".join(conditions), params
