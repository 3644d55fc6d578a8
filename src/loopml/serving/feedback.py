"""Bulk feedback: labels for logged predictions from a CSV or Parquet file.

Labels often arrive in bulk, days after the predictions (chargebacks, reviews, a warehouse export). A file of
`prediction_id,label[,ts]` is checked whole before anything is written, then appended to the labels dataset
in the schema and day partitions of `POST /v1/feedback`, so the latest label by `ts` wins either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from loopml.clock import Clock, as_utc
from loopml.errors import NotFoundError, ValidationError
from loopml.serving.prediction_log import LABEL_SCHEMA, LABELS, append_by_day
from loopml.storage.offline import OfflineStore

logger = logging.getLogger(__name__)

REQUIRED = ("prediction_id", "label")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
TIME_HELP = "write ISO 8601 such as 2026-03-01T12:00:00Z (a time without a zone is UTC)"


def record_feedback_file(offline: OfflineStore, path: Path | str, *, clock: Clock) -> int:
    """Validate a label file and append its labels; returns how many were written.

    Rows without a time (no `ts` column, or an empty cell) are stamped with the clock's now.
    """
    labels = read_label_file(path, now=clock.now())
    written = append_by_day(offline, LABELS, labels)
    logger.info("Recorded %d labels from %s", written, path)
    return written


def read_label_file(path: Path | str, *, now: datetime) -> pa.Table:
    """A CSV or Parquet file's labels as a LABEL_SCHEMA table; a ValidationError names the first bad row."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValidationError(
            f"Label file {path} is neither CSV nor Parquet; name it .csv or .parquet, with the columns "
            "prediction_id,label and optionally ts."
        )
    if not path.is_file():
        raise NotFoundError(f"Label file {path} does not exist; check the path.")
    frame = _read_csv(path) if kind == "csv" else _read_parquet(path)
    missing = [column for column in REQUIRED if column not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise ValidationError(
            f"Label file {path} has no column {' or '.join(missing)} (its columns: {found}); the header "
            "must name prediction_id and label, and optionally ts."
        )
    rows = _Rows(path, csv=kind == "csv")
    labels = pd.DataFrame(
        {
            "prediction_id": _ids(frame["prediction_id"], rows),
            "label": _labels(frame["label"], rows),
            "ts": _times(frame["ts"] if "ts" in frame.columns else None, len(frame), rows, now),
        }
    )
    # The same id twice at the same time would tie for "latest": keep the later row of the file.
    labels = labels.drop_duplicates(["prediction_id", "ts"], keep="last")
    return pa.Table.from_pandas(labels, schema=LABEL_SCHEMA, preserve_index=False)


@dataclass(frozen=True)
class _Rows:
    """Names a row in an error the way the user finds it: the CSV line (header = line 1), or the Parquet row."""

    path: Path
    csv: bool

    def name(self, position: int) -> str:
        return f"{self.path} line {position + 2}" if self.csv else f"{self.path} row {position + 1}"


def _read_csv(path: Path) -> pd.DataFrame:
    """Every cell as text, so ids keep their leading zeros and each column is checked by one rule."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise ValidationError(
            f"Label file {path} is empty; write the header prediction_id,label[,ts] and one row per label."
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValidationError(
            f"Label file {path} is not readable CSV ({exc}); save it as UTF-8 CSV."
        ) from exc


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise ValidationError(f"Label file {path} is not a readable Parquet file: {exc}.") from exc


def _ids(values: pd.Series, rows: _Rows) -> pd.Series:
    ids = values.astype("string").str.strip().fillna("").reset_index(drop=True)
    empty = (ids == "").to_numpy()
    if empty.any():
        raise ValidationError(
            f"{rows.name(int(empty.argmax()))}: prediction_id is empty; every label needs the prediction_id "
            "that the predict call answered with."
        )
    return ids.astype(object)


def _labels(values: pd.Series, rows: _Rows) -> pd.Series:
    """Finite numbers; booleans (true/false in a CSV) count as 1/0."""
    values = values.reset_index(drop=True)
    if pd.api.types.is_bool_dtype(values):
        values = values.astype("float64")
    elif not pd.api.types.is_numeric_dtype(values):
        word = values.astype("string").str.strip().str.lower()
        values = values.mask(word == "true", "1").mask(word == "false", "0")
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = ~np.isfinite(numbers.to_numpy())
    if bad.any():
        position = int(bad.argmax())
        raise ValidationError(
            f"{rows.name(position)}: label {_shown(values.iloc[position])} is not a "
            "number; write a finite number such as 1, 0 or 0.75 (true and false read as 1 and 0)."
        )
    return numbers


def _shown(value: object) -> str:
    """A cell as an error message quotes it."""
    if isinstance(value, str):
        return repr(value) if value.strip() else "(empty)"
    return "(empty)" if pd.isna(value) else str(value)


def _times(values: pd.Series | None, count: int, rows: _Rows, now: datetime) -> pd.Series:
    """UTC times truncated to microseconds; a naive time is UTC; no column or an empty cell means `now`."""
    fallback = pd.Timestamp(as_utc(now))
    if values is None:
        return pd.Series([fallback] * count, dtype="datetime64[ns, UTC]").dt.floor("us")
    values = values.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(values):
        times = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    else:
        blank = values.isna() | (values.astype("string").str.strip() == "").fillna(True)
        try:
            times = pd.to_datetime(values.where(~blank), utc=True, errors="coerce", format="ISO8601")
        except (ValueError, TypeError, OverflowError):  # a mix pandas refuses as a whole: find the row
            times = pd.Series([_one_time(v) for v in values.where(~blank)], dtype="datetime64[ns, UTC]")
        bad = (times.isna() & ~blank).to_numpy()
        if bad.any():
            position = int(bad.argmax())
            raise ValidationError(
                f"{rows.name(position)}: ts {values.iloc[position]!r} is not a time; {TIME_HELP}."
            )
    return times.fillna(fallback).dt.floor("us")


def _one_time(value: object) -> pd.Timestamp:
    """One cell as a UTC time, NaT when it is not one."""
    try:
        return pd.to_datetime(value, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
