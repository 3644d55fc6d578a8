import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from loopml.serving.prediction_log import LABEL_SCHEMA, BatchWriter
from loopml.storage.offline import OfflineStore

T0 = datetime(2026, 1, 1, 23, 59, tzinfo=UTC)


def label(i: int, ts: datetime = T0) -> dict:
    return {"prediction_id": f"p{i}", "label": float(i % 2), "ts": ts}


def test_flush_and_close_write_everything_partitioned_by_day(tmp_path: Path) -> None:
    offline = OfflineStore(tmp_path)
    writer = BatchWriter(offline, "labels", LABEL_SCHEMA, batch_size=1000, flush_seconds=60)
    for i in range(10):
        assert writer.put(label(i, T0 + timedelta(minutes=i % 2 * 5)))
    writer.flush()
    assert len(offline.read("labels")) == 10
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["date=2026-01-01", "date=2026-01-02"]
    writer.put(label(10))
    writer.close()
    assert len(offline.read("labels")) == 11


def test_a_full_queue_refuses_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    offline = OfflineStore(tmp_path)
    release, writing = threading.Event(), threading.Event()
    append = offline.append

    def slow_append(*args, **kwargs):
        writing.set()
        release.wait(10)
        return append(*args, **kwargs)

    offline.append = slow_append
    drops = []
    writer = BatchWriter(
        offline, "labels", LABEL_SCHEMA, batch_size=1, max_queue=1, on_drop=lambda: drops.append(1)
    )
    assert writer.put(label(0))
    assert writing.wait(5)  # the writer thread is now busy with record 0
    assert writer.put(label(1))  # fills the queue
    assert not writer.put(label(2))
    assert not writer.put(label(3), timeout=0.05)
    assert (writer.dropped, len(drops)) == (2, 2)
    release.set()
    writer.close()
    assert sorted(offline.read("labels").prediction_id) == ["p0", "p1"]


def test_a_steady_trickle_is_written_within_the_flush_interval(tmp_path: Path) -> None:
    import time

    offline = OfflineStore(tmp_path)
    writer = BatchWriter(offline, "labels", LABEL_SCHEMA, batch_size=1000, flush_seconds=0.2)
    started = time.monotonic()
    written_after = None
    for i in range(40):  # one record every 25 ms never leaves the queue idle for 0.2 s
        writer.put(label(i))
        time.sleep(0.025)
        if written_after is None and offline.exists("labels"):
            written_after = time.monotonic() - started
    writer.close()
    assert written_after is not None, "nothing was written while records kept arriving"
    assert len(offline.read("labels")) == 40


def test_a_failed_write_is_kept_reported_and_retried(tmp_path: Path) -> None:
    import pytest

    from loopml.errors import StoreUnavailableError

    offline = OfflineStore(tmp_path)
    append = offline.append
    failures = {"left": 1}

    def flaky_append(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        return append(*args, **kwargs)

    offline.append = flaky_append
    writer = BatchWriter(offline, "labels", LABEL_SCHEMA, batch_size=1000, flush_seconds=60)
    for i in range(3):
        writer.put(label(i))
    with pytest.raises(StoreUnavailableError, match=r"No space left on device.*kept in memory and retried"):
        writer.flush()
    writer.flush()  # the disk has room again: the same records are written once
    assert sorted(offline.read("labels").prediction_id) == ["p0", "p1", "p2"]
    assert writer.dropped == 0
    writer.close()
