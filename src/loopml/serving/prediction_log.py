"""The prediction log and labels: written in batches by a background thread, read with DuckDB.

The serving hot path only puts a record on a bounded queue. A writer thread turns batches into Parquet files
partitioned by day; `flush()` waits until everything queued so far is on disk, and `close()` flushes before
the server exits, so nothing acknowledged is lost. A full queue drops the record and counts the drop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from loopml.storage.offline import OfflineStore

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
    ]
)
LABEL_SCHEMA = pa.schema(
    [("prediction_id", pa.string()), ("label", pa.float64()), ("ts", pa.timestamp("us", tz="UTC"))]
)


class BatchWriter:
    """Appends records to an offline dataset in batches from a background thread."""

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
    ) -> None:
        self.offline, self.dataset, self.schema = offline, dataset, schema
        self.batch_size, self.flush_seconds = batch_size, flush_seconds
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._on_drop = on_drop
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"loopml-{dataset}-writer", daemon=True)
        self._thread.start()

    def put(self, record: dict[str, Any], timeout: float | None = None) -> bool:
        """Queue a record, waiting up to `timeout` seconds for room (by default not at all).

        Returns False, and counts a drop, when the queue stayed full.
        """
        try:
            if timeout is None:
                self._queue.put_nowait(record)
            else:
                self._queue.put(record, timeout=timeout)
        except queue.Full:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            return False
        return True

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every record queued before this call is written."""
        done = threading.Event()
        self._queue.put(done, timeout=timeout)
        if not done.wait(timeout):
            raise TimeoutError(f"The {self.dataset} writer did not flush within {timeout} s.")

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        batch: list[dict[str, Any]] = []
        while True:
            try:
                item = self._queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                item = "tick"
            if isinstance(item, dict):
                batch.append(item)
                if len(batch) < self.batch_size:
                    continue
            self._write(batch)
            batch = []
            if isinstance(item, threading.Event):
                item.set()
            elif item is None:
                return

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        by_day: dict[str, list[dict[str, Any]]] = {}
        for record in batch:
            by_day.setdefault(record["ts"].strftime("%Y-%m-%d"), []).append(record)
        try:
            for day, records in by_day.items():
                table = pa.Table.from_pylist(records, schema=self.schema)
                self.offline.append(self.dataset, table, partition=f"date={day}")
        except Exception:
            logger.exception("Writing %d %s records failed; they are lost", len(batch), self.dataset)


def read_predictions(offline: OfflineStore, endpoint: str, start: datetime, end: datetime) -> pd.DataFrame:
    """Predictions of an endpoint with start <= ts < end, oldest first."""
    if not offline.exists(PREDICTIONS):
        return pd.DataFrame(columns=PREDICTION_SCHEMA.names)
    with offline.connect() as conn:
        conn.execute("SET TimeZone='UTC'")
        return conn.execute(
            f"SELECT * FROM read_parquet('{offline.glob(PREDICTIONS)}', hive_partitioning=false) "
            "WHERE endpoint = ? AND ts >= ? AND ts < ? ORDER BY ts, prediction_id",
            [endpoint, start, end],
        ).df()


def read_labelled_predictions(
    offline: OfflineStore, endpoint: str, start: datetime, end: datetime, *, labels_until: datetime
) -> pd.DataFrame:
    """Predictions in [start, end) joined to their latest label recorded no later than `labels_until`."""
    if not offline.exists(PREDICTIONS) or not offline.exists(LABELS):
        return pd.DataFrame(columns=[*PREDICTION_SCHEMA.names, "label"])
    with offline.connect() as conn:
        conn.execute("SET TimeZone='UTC'")
        return conn.execute(
            f"""
            WITH latest AS (
                SELECT prediction_id, label FROM read_parquet('{offline.glob(LABELS)}', hive_partitioning=false)
                WHERE ts <= ?
                QUALIFY row_number() OVER (PARTITION BY prediction_id ORDER BY ts DESC) = 1
            )
            SELECT p.*, latest.label
            FROM read_parquet('{offline.glob(PREDICTIONS)}', hive_partitioning=false) AS p
            JOIN latest USING (prediction_id)
            WHERE p.endpoint = ? AND p.ts >= ? AND p.ts < ?
            ORDER BY p.ts, p.prediction_id
            """,
            [labels_until, endpoint, start, end],
        ).df()
