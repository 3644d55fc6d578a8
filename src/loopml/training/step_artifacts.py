"""Step outputs as content-addressed artifacts, in a format chosen by type and recorded beside the digest.

DataFrames go to Parquet, numpy arrays to .npy, plain JSON values (dicts with string keys, lists, strings,
numbers, booleans, None) to JSON, anything else to a joblib pickle. A value the typed format cannot hold (a
DataFrame with non-string column names, which Parquet would turn into strings, or an object array) falls back
to joblib. Equal values give equal bytes, so a re-run step whose output did not change leaves its downstream
steps cached.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
import pandas as pd

from loopml.errors import ValidationError
from loopml.storage.artifacts import ArtifactStore

FORMATS = ("parquet", "npy", "json", "joblib")


@dataclass(frozen=True)
class StoredOutput:
    """Where a step output lives (its sha256) and how to read it back."""

    digest: str
    format: str
    size: int

    def record(self) -> dict[str, Any]:
        return {"digest": self.digest, "format": self.format, "size": self.size}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StoredOutput:
        return cls(record["digest"], record["format"], record.get("size", 0))


def save_output(artifacts: ArtifactStore, value: Any) -> StoredOutput:
    """Serialise `value` in its type's format and store it."""
    data, format_ = serialise(value)
    return StoredOutput(artifacts.put(data), format_, len(data))


def load_output(artifacts: ArtifactStore, stored: StoredOutput) -> Any:
    """The value back, read from its verified blob."""
    return deserialise(artifacts.get(stored.digest), stored.format)


def serialise(value: Any) -> tuple[bytes, str]:
    if isinstance(value, pd.DataFrame) and all(type(c) is str for c in value.columns):
        buffer = io.BytesIO()
        try:
            value.to_parquet(buffer)
            return buffer.getvalue(), "parquet"
        except (ValueError, TypeError, NotImplementedError):  # e.g. columns of mixed Python objects
            pass
    elif isinstance(value, np.ndarray) and value.dtype != object:
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return buffer.getvalue(), "npy"
    elif _is_plain_json(value):
        return json.dumps(value, ensure_ascii=False, allow_nan=True).encode(), "json"
    buffer = io.BytesIO()
    joblib.dump(value, buffer)
    return buffer.getvalue(), "joblib"


def deserialise(data: bytes, format_: str) -> Any:
    if format_ == "parquet":
        return pd.read_parquet(io.BytesIO(data))
    if format_ == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if format_ == "json":
        return json.loads(data)
    if format_ == "joblib":
        return joblib.load(io.BytesIO(data))
    raise ValidationError(f"Unknown step output format {format_!r}; known formats are {list(FORMATS)}.")


def _is_plain_json(value: Any, depth: int = 0) -> bool:
    """True when JSON gives back exactly this value (types included): no tuples, numpy scalars or int keys."""
    if depth > 100:
        return False
    if value is None or type(value) in (bool, int, str):
        return True
    if type(value) is float:
        return True
    if type(value) is list:
        return all(_is_plain_json(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _is_plain_json(v, depth + 1) for k, v in value.items())
    return False
