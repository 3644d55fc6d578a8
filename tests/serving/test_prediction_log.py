import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from loopml.serving.prediction_log import (
    LABEL_SCHEMA,
    LABELS,
    PREDICTION_SCHEMA,
    PREDICTIONS,
    BatchWriter,
    append_by_day,
    day_partition,
    read_labelled_predictions,
    read_predictions,
    record_table,
)
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


def test_close_right_after_a_burst_writes_every_acknowledged_record(tmp_path: Path) -> None:
    offline = OfflineStore(tmp_path)
    writer = BatchWriter(offline, "labels", LABEL_SCHEMA, batch_size=50_000, flush_seconds=3600)
    accepted = sum(writer.put(label(i)) for i in range(20_000))
    assert writer.depth > 0  # nothing was due yet: no full batch, no timer
    writer.close()
    assert accepted == 20_000 and writer.dropped == 0
    assert offline.read("labels").prediction_id.nunique() == 20_000
    assert writer.depth == 0


def test_depth_counts_queued_records_and_a_closed_writer_refuses(tmp_path: Path) -> None:
    offline = OfflineStore(tmp_path)
    writer = BatchWriter(offline, "labels", LABEL_SCHEMA, batch_size=1000, flush_seconds=3600)
    assert writer.depth == 0
    for i in range(3):
        writer.put(label(i))
    assert writer.depth == 3
    writer.flush()
    assert writer.depth == 0
    writer.close()
    writer.close()  # a second close does nothing
    assert not writer.put(label(3))
    assert writer.dropped == 1
    assert len(offline.read("labels")) == 3


def test_depth_includes_records_kept_after_a_failed_write(tmp_path: Path) -> None:
    import pytest

    from loopml.errors import StoreUnavailableError

    offline = OfflineStore(tmp_path)

    def failing_append(*args, **kwargs):
        raise OSError(13, "Permission denied")

    offline.append = failing_append
    writer = BatchWriter(offline, "labels", LABEL_SCHEMA, batch_size=1000, flush_seconds=3600)
    for i in range(4):
        writer.put(label(i))
    with pytest.raises(StoreUnavailableError):
        writer.flush()
    assert writer.depth == 4
    with pytest.raises(StoreUnavailableError):
        writer.close()


def prediction(i: int, route: str | None = "primary", served: bool | None = True, **fields) -> dict:
    return {
        "prediction_id": f"p{i}",
        "ts": T0 + timedelta(seconds=i),
        "endpoint": "fraud",
        "model_name": "fraud",
        "model_version": 1,
        "output": i / 10,
        "route": route,
        "served": served,
        **fields,
    }


def write_predictions(offline: OfflineStore, records: list[dict]) -> None:
    writer = BatchWriter(offline, PREDICTIONS, PREDICTION_SCHEMA, flush_seconds=3600)
    for record in records:
        assert writer.put(record)
    writer.close()


WINDOW = (T0 - timedelta(days=1), T0 + timedelta(days=1))


def test_readers_return_served_predictions_unless_shadow_ones_are_asked_for(tmp_path: Path) -> None:
    offline = OfflineStore(tmp_path)
    write_predictions(
        offline,
        [
            prediction(0),
            prediction(1, route="canary"),
            prediction(2, route="shadow-v2", served=False, model_version=2),
            prediction(3, served=None),  # a record that says nothing is a served one
        ],
    )
    writer = BatchWriter(offline, LABELS, LABEL_SCHEMA)
    for i in range(4):
        writer.put(label(i, T0 + timedelta(hours=1)))
    writer.close()

    assert read_predictions(offline, "fraud", *WINDOW).prediction_id.tolist() == ["p0", "p1", "p3"]
    everything = read_predictions(offline, "fraud", *WINDOW, include_shadow=True)
    assert everything.prediction_id.tolist() == ["p0", "p1", "p2", "p3"]
    assert everything.served.tolist() == [True, True, False, True]
    assert everything.route.tolist() == ["primary", "canary", "shadow-v2", "primary"]
    assert read_predictions(offline, "fraud", *WINDOW, route="canary").prediction_id.tolist() == ["p1"]
    assert read_predictions(offline, "fraud", *WINDOW, route="shadow-v2").empty
    shadow = read_predictions(offline, "fraud", *WINDOW, route="shadow-v2", include_shadow=True)
    assert shadow.model_version.tolist() == [2]

    until = T0 + timedelta(days=1)
    labelled = read_labelled_predictions(offline, "fraud", *WINDOW, labels_until=until)
    assert labelled.prediction_id.tolist() == ["p0", "p1", "p3"]
    assert read_labelled_predictions(
        offline, "fraud", *WINDOW, labels_until=until, include_shadow=True
    ).prediction_id.tolist() == ["p0", "p1", "p2", "p3"]
    by_route = read_labelled_predictions(offline, "fraud", *WINDOW, labels_until=until, route="canary")
    assert by_route.prediction_id.tolist() == ["p1"] and by_route.label.tolist() == [1.0]


OLD_SCHEMA = pa.schema([f for f in PREDICTION_SCHEMA if f.name not in ("route", "served")])


def test_files_written_before_route_and_served_existed_read_as_served(tmp_path: Path) -> None:
    offline = OfflineStore(tmp_path)
    old = [prediction(i) for i in range(2)]
    offline.append(PREDICTIONS, record_table(old, OLD_SCHEMA), partition=day_partition(T0))
    only_old = read_predictions(offline, "fraud", *WINDOW)
    assert list(only_old.columns) == PREDICTION_SCHEMA.names
    assert only_old.prediction_id.tolist() == ["p0", "p1"]
    assert only_old.served.tolist() == [True, True] and only_old.route.isna().all()
    assert read_predictions(offline, "fraud", *WINDOW, route="primary").empty

    write_predictions(offline, [prediction(5, route="shadow", served=False), prediction(6, route="primary")])
    mixed = read_predictions(offline, "fraud", *WINDOW, include_shadow=True)
    assert mixed.prediction_id.tolist() == ["p0", "p1", "p5", "p6"]
    assert mixed.served.tolist() == [True, True, False, True]
    assert read_predictions(offline, "fraud", *WINDOW).prediction_id.tolist() == ["p0", "p1", "p6"]
    labels = BatchWriter(offline, LABELS, LABEL_SCHEMA)
    labels.put(label(0, T0 + timedelta(hours=1)))
    labels.close()
    labelled = read_labelled_predictions(offline, "fraud", *WINDOW, labels_until=T0 + timedelta(days=1))
    assert labelled.prediction_id.tolist() == ["p0"] and labelled.served.tolist() == [True]


def test_empty_logs_read_as_empty_frames_with_every_column(tmp_path: Path) -> None:
    offline = OfflineStore(tmp_path)
    assert list(read_predictions(offline, "fraud", *WINDOW).columns) == PREDICTION_SCHEMA.names
    labelled = read_labelled_predictions(offline, "fraud", *WINDOW, labels_until=T0)
    assert list(labelled.columns) == [*PREDICTION_SCHEMA.names, "label"]


def test_append_by_day_uses_the_writers_partitions(tmp_path: Path) -> None:
    offline = OfflineStore(tmp_path)
    rows = [label(0, T0), label(1, T0 + timedelta(minutes=5)), label(2, T0 + timedelta(days=3))]
    assert append_by_day(offline, LABELS, record_table(rows, LABEL_SCHEMA)) == 3
    folders = sorted(p.name for p in (tmp_path / LABELS).iterdir())
    assert folders == [day_partition(T0), day_partition(T0 + timedelta(minutes=5)), "date=2026-01-04"]
    assert folders[:2] == ["date=2026-01-01", "date=2026-01-02"]
    assert sorted(offline.read(LABELS).prediction_id) == ["p0", "p1", "p2"]


def test_a_writer_waiting_for_idle_moments_still_writes_when_the_server_is_never_idle(tmp_path: Path) -> None:
    import time

    offline = OfflineStore(tmp_path)
    never_idle = threading.Event()  # a saturated server never sets it
    expanded = []
    writer = BatchWriter(
        offline,
        "labels",
        LABEL_SCHEMA,
        batch_size=50,
        flush_seconds=0.05,
        idle=never_idle,
        expand=lambda item: expanded.append(item) or [item],
    )
    for i in range(200):
        writer.put(label(i))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(expanded) < 200:
        time.sleep(0.05)
    assert len(expanded) == 200  # each slice waited a little for an idle moment, then went ahead
    writer.close()
    assert len(offline.read("labels")) == 200
