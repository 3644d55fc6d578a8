"""Bulk feedback from a file: CSV and Parquet, checked whole, joined by prediction id, the latest label wins."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopml.clock import SimulatedClock
from loopml.errors import NotFoundError, ValidationError
from loopml.serving.feedback import read_label_file, record_feedback_file
from loopml.serving.prediction_log import (
    LABEL_SCHEMA,
    LABELS,
    PREDICTION_SCHEMA,
    PREDICTIONS,
    BatchWriter,
    read_labelled_predictions,
)
from loopml.storage.offline import OfflineStore

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
WINDOW = (T0 - timedelta(days=1), T0 + timedelta(days=1))


@pytest.fixture
def offline(tmp_path: Path) -> OfflineStore:
    """An offline store holding five served predictions p0..p4 and one shadow prediction s0."""
    store = OfflineStore(tmp_path / "offline")
    writer = BatchWriter(store, PREDICTIONS, PREDICTION_SCHEMA, flush_seconds=3600)
    for i in range(5):
        writer.put(
            {"prediction_id": f"p{i}", "ts": T0 + timedelta(minutes=i), "endpoint": "fraud", "output": 0.5}
        )
    writer.put(
        {
            "prediction_id": "s0",
            "ts": T0,
            "endpoint": "fraud",
            "output": 0.5,
            "route": "shadow",
            "served": False,
        }
    )
    writer.close()
    return store


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_csv_file_is_recorded_and_joined_to_its_predictions(offline: OfflineStore, tmp_path: Path) -> None:
    clock = SimulatedClock(T0 + timedelta(hours=2))
    file = write_csv(
        tmp_path / "labels.csv",
        "prediction_id,label,ts\n"
        "p0,1,2026-03-01T13:00:00Z\n"
        "p1,0,2026-03-01 13:30:00\n"  # no zone: UTC
        "p2,true,\n"  # empty time: now; true reads as 1
        "p3,0.25,2026-03-01T15:00:00+02:00\n",
    )
    assert record_feedback_file(offline, file, clock=clock) == 4
    labels = offline.read(LABELS).sort_values("prediction_id")
    assert labels.label.tolist() == [1.0, 0.0, 1.0, 0.25]
    assert labels.ts.tolist() == [
        pd.Timestamp("2026-03-01T13:00:00Z"),
        pd.Timestamp("2026-03-01T13:30:00Z"),
        pd.Timestamp(clock.now()),
        pd.Timestamp("2026-03-01T13:00:00Z"),
    ]
    joined = read_labelled_predictions(offline, "fraud", *WINDOW, labels_until=clock.now())
    assert dict(zip(joined.prediction_id, joined.label, strict=True)) == {
        "p0": 1.0,
        "p1": 0.0,
        "p2": 1.0,
        "p3": 0.25,
    }


def test_a_parquet_file_without_times_is_stamped_with_the_clock(
    offline: OfflineStore, tmp_path: Path
) -> None:
    clock = SimulatedClock(T0 + timedelta(days=3))  # a later day: its own partition
    file = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"prediction_id": ["p0", "p4"], "label": [1, 0], "reviewer": ["a", "b"]}), file)
    assert record_feedback_file(offline, file, clock=clock) == 2
    assert (offline.root / LABELS / "date=2026-03-04").is_dir()
    joined = read_labelled_predictions(offline, "fraud", *WINDOW, labels_until=clock.now())
    assert dict(zip(joined.prediction_id, joined.label, strict=True)) == {"p0": 1.0, "p4": 0.0}
    assert read_labelled_predictions(offline, "fraud", *WINDOW, labels_until=T0).empty  # not yet known then


def test_a_parquet_file_with_typed_times_and_boolean_labels(tmp_path: Path) -> None:
    file = tmp_path / "labels.parquet"
    naive = [datetime(2026, 3, 1, 13), datetime(2026, 3, 2, 1)]
    pq.write_table(pa.table({"prediction_id": [7, 8], "label": [True, False], "ts": naive}), file)
    table = read_label_file(file, now=T0)
    assert table.schema == LABEL_SCHEMA
    assert table.column("prediction_id").to_pylist() == ["7", "8"]
    assert table.column("label").to_pylist() == [1.0, 0.0]
    assert table.column("ts").to_pylist() == [d.replace(tzinfo=UTC) for d in naive]


def test_the_latest_label_wins_over_one_sent_earlier_through_the_writer(
    offline: OfflineStore, tmp_path: Path
) -> None:
    writer = BatchWriter(offline, LABELS, LABEL_SCHEMA)
    writer.put({"prediction_id": "p0", "label": 1.0, "ts": T0 + timedelta(hours=1)})
    writer.put({"prediction_id": "p1", "label": 1.0, "ts": T0 + timedelta(hours=5)})
    writer.close()
    file = write_csv(
        tmp_path / "corrections.csv",
        "prediction_id,label,ts\np0,0,2026-03-01T14:00:00Z\np1,0,2026-03-01T14:00:00Z\n",
    )
    record_feedback_file(offline, file, clock=SimulatedClock(T0 + timedelta(hours=6)))
    joined = read_labelled_predictions(offline, "fraud", *WINDOW, labels_until=T0 + timedelta(hours=6))
    # p0: the file's label is the later one; p1: the writer's label (17:00) is later than the file's (14:00)
    assert dict(zip(joined.prediction_id, joined.label, strict=True)) == {"p0": 0.0, "p1": 1.0}
    before = read_labelled_predictions(offline, "fraud", *WINDOW, labels_until=T0 + timedelta(hours=1))
    assert dict(zip(before.prediction_id, before.label, strict=True)) == {"p0": 1.0}


def test_a_repeated_row_keeps_the_last_one_of_the_file(tmp_path: Path) -> None:
    file = write_csv(tmp_path / "labels.csv", "prediction_id,label\np0,1\np1,1\np0,0\n")
    table = read_label_file(file, now=T0)
    assert dict(zip(table["prediction_id"].to_pylist(), table["label"].to_pylist(), strict=True)) == {
        "p0": 0.0,
        "p1": 1.0,
    }


def test_labels_for_shadow_predictions_join_only_when_shadow_ones_are_asked_for(
    offline: OfflineStore, tmp_path: Path
) -> None:
    file = write_csv(tmp_path / "labels.csv", "prediction_id,label\ns0,1\np0,1\n")
    clock = SimulatedClock(T0 + timedelta(hours=1))
    record_feedback_file(offline, file, clock=clock)
    served = read_labelled_predictions(offline, "fraud", *WINDOW, labels_until=clock.now())
    assert served.prediction_id.tolist() == ["p0"]
    everything = read_labelled_predictions(
        offline, "fraud", *WINDOW, labels_until=clock.now(), include_shadow=True
    )
    assert sorted(everything.prediction_id) == ["p0", "s0"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,label\np0,1\n", r"has no column prediction_id .*header must name prediction_id and label"),
        ("prediction_id,score\np0,1\n", r"has no column label \(its columns: prediction_id, score\)"),
        ("prediction_id,label\np0,1\n,1\n", r"labels\.csv line 3: prediction_id is empty"),
        (
            "prediction_id,label\np0,1\np1,yes\n",
            r"line 3: label 'yes' is not a number; write a finite number",
        ),
        ("prediction_id,label\np0,\n", r"line 2: label \(empty\) is not a number"),
        ("prediction_id,label\np0,nan\n", r"line 2: label 'nan' is not a number"),
        (
            "prediction_id,label,ts\np0,1,2026-03-01\np1,0,yesterday\n",
            r"line 3: ts 'yesterday' is not a time; write ISO 8601",
        ),
        (
            "prediction_id,label,ts\np0,1,2026-13-45T00:00:00\n",
            r"line 2: ts '2026-13-45T00:00:00' is not a time",
        ),
        ("", r"is empty; write the header prediction_id,label"),
    ],
)
def test_a_bad_csv_file_is_refused_whole_with_the_row_and_the_fix(
    offline: OfflineStore, tmp_path: Path, text: str, message: str
) -> None:
    file = write_csv(tmp_path / "labels.csv", text)
    with pytest.raises(ValidationError, match=message):
        record_feedback_file(offline, file, clock=SimulatedClock(T0))
    assert not offline.exists(LABELS)  # nothing of a bad file is written


def test_a_bad_parquet_file_names_its_row(tmp_path: Path) -> None:
    file = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"prediction_id": ["p0", None], "label": [1.0, 0.0]}), file)
    with pytest.raises(ValidationError, match=r"labels\.parquet row 2: prediction_id is empty"):
        read_label_file(file, now=T0)
    pq.write_table(pa.table({"prediction_id": ["p0", "p1"], "label": [1.0, float("inf")]}), file)
    with pytest.raises(ValidationError, match=r"row 2: label inf is not a number"):
        read_label_file(file, now=T0)
    file.write_bytes(b"not parquet at all")
    with pytest.raises(ValidationError, match="is not a readable Parquet file"):
        read_label_file(file, now=T0)


def test_an_unknown_format_or_a_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"neither CSV nor Parquet; name it \.csv or \.parquet"):
        read_label_file(tmp_path / "labels.json", now=T0)
    with pytest.raises(NotFoundError, match="does not exist"):
        read_label_file(tmp_path / "absent.csv", now=T0)


def test_ids_keep_leading_zeros_and_a_header_only_file_writes_nothing(
    offline: OfflineStore, tmp_path: Path
) -> None:
    table = read_label_file(write_csv(tmp_path / "a.csv", "prediction_id,label\n007,1\n"), now=T0)
    assert table["prediction_id"].to_pylist() == ["007"]
    header_only = write_csv(tmp_path / "b.csv", "prediction_id,label,ts\n")
    assert record_feedback_file(offline, header_only, clock=SimulatedClock(T0)) == 0
    assert not offline.exists(LABELS)
