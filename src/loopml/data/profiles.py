"""Column profiles: what monitoring compares a window with, instead of re-reading the reference data.

A reference profile holds, per column, the missing count and either numeric bins (edges at the reference's
quantiles, which double as its quantile sketch, with counts, min, max, mean and spread) or category counts.
A window is profiled *against* a reference: its numeric values are counted in the reference's bins, so its
memory does not grow with its size, and profiles of the same reference's windows merge by adding up (per
partition, per day, per worker). Bins are right-closed: bin 0 holds values ≤ the first edge (the reference
minimum), bin i the values in (e_{i−1}, e_i], and the last bin values above the reference maximum.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import ValidationError

NUMERIC, CATEGORICAL = "numeric", "categorical"
DEFAULT_BINS = 100
MAX_CATEGORIES = 10_000  # distinct categories kept per column; the rarest beyond that are pooled
OTHER = "__other__"
REFERENCE_FILE = "monitoring/reference_profile.json"  # a model version's file holding its ReferenceProfile
SCORE = "score"
DEFAULT_BATCH_ROWS = 262_144
MIXED_SAMPLE = 10_000  # values looked at to tell whether a text column also holds numbers


@dataclass(frozen=True)
class ColumnProfile:
    """One column's summary. `invalid` counts values of the wrong type for its kind (left out of the rest)."""

    name: str
    kind: str
    rows: int
    missing: int
    invalid: int = 0
    edges: np.ndarray | None = None
    counts: np.ndarray | None = None
    sums: np.ndarray | None = None  # of the values in each bin (exact Wasserstein from bins)
    below: int = 0  # values under the first edge (bin 0 also holds values equal to it)
    minimum: float | None = None
    maximum: float | None = None
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    categories: dict[str, int] = field(default_factory=dict)
    mixed: bool = False  # numbers and text seen in one column (profiled as categories)

    @property
    def count(self) -> int:
        """Values that count in the distribution (not missing, not invalid)."""
        return self.rows - self.missing - self.invalid

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    @property
    def missing_rate(self) -> float:
        return self.missing / self.rows if self.rows else 0.0

    @property
    def above(self) -> int:
        """Values over the last edge (a window's values above its reference's maximum)."""
        return int(self.counts[-1]) if self.counts is not None and len(self.counts) else 0

    def quantile(self, q: float) -> float | None:
        """An estimate of the q-quantile of a numeric column from its bins (exact at a reference's edges)."""
        if self.kind != NUMERIC or not self.count or self.edges is None or self.counts is None:
            return None
        points = np.concatenate([[self.minimum], self.edges, [self.maximum]])
        points = np.clip(points, self.minimum, self.maximum)
        share = np.concatenate([[0.0], np.cumsum(self.counts) / self.count])
        return float(np.interp(q, share, points))

    def merge(self, other: ColumnProfile) -> ColumnProfile:
        """The profile of both samples together (both binned against the same reference)."""
        if other.kind != self.kind:
            raise ValidationError(
                f"Column '{self.name}' is {self.kind} in one profile and {other.kind} in the other; profile both "
                "against the same reference."
            )
        rows, missing, invalid = (
            self.rows + other.rows,
            self.missing + other.missing,
            self.invalid + other.invalid,
        )
        if self.kind == CATEGORICAL:
            merged = dict(self.categories)
            for category, n in other.categories.items():
                merged[category] = merged.get(category, 0) + n
            return replace(
                self,
                rows=rows,
                missing=missing,
                invalid=invalid,
                categories=_capped(merged),
                mixed=self.mixed or other.mixed,
            )
        if not _same_edges(self.edges, other.edges):
            raise ValidationError(
                f"Column '{self.name}': the profiles were binned on different edges; profile both windows "
                "against the same reference profile before merging."
            )
        assert self.counts is not None and other.counts is not None
        assert self.sums is not None and other.sums is not None
        n, m = self.count, other.count
        delta = other.mean - self.mean
        total = n + m
        return replace(
            self,
            rows=rows,
            missing=missing,
            invalid=invalid,
            counts=self.counts + other.counts,
            sums=self.sums + other.sums,
            below=self.below + other.below,
            minimum=_extreme(min, self.minimum, other.minimum),
            maximum=_extreme(max, self.maximum, other.maximum),
            mean=self.mean + delta * m / total if total else 0.0,
            m2=self.m2 + other.m2 + delta**2 * n * m / total if total else 0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "rows": self.rows,
            "missing": self.missing,
        }
        data["invalid"] = self.invalid
        if self.kind == NUMERIC:
            assert self.edges is not None and self.counts is not None and self.sums is not None
            data |= {
                "edges": self.edges.tolist(),
                "counts": self.counts.astype(int).tolist(),
                "sums": self.sums.tolist(),
                "below": self.below,
                "minimum": self.minimum,
                "maximum": self.maximum,
                "mean": self.mean,
                "m2": self.m2,
            }
        else:
            data |= {"categories": self.categories, "mixed": self.mixed}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnProfile:
        values = dict(data)
        if values["kind"] == NUMERIC:
            values["edges"] = np.asarray(values["edges"], dtype=float)
            values["counts"] = np.asarray(values["counts"], dtype=np.int64)
            values["sums"] = np.asarray(values["sums"], dtype=float)
        return cls(**values)


@dataclass(frozen=True)
class Profile:
    """Column profiles of one dataset or window."""

    columns: dict[str, ColumnProfile]
    rows: int

    def __getitem__(self, name: str) -> ColumnProfile:
        found = self.columns.get(name)
        if found is None:
            raise ValidationError(f"The profile has no column '{name}'; it has {sorted(self.columns)}.")
        return found

    def merge(self, other: Profile) -> Profile:
        """Both profiles together (windows of the same reference: per partition, per day)."""
        names = list(dict.fromkeys([*self.columns, *other.columns]))
        merged = {}
        for name in names:
            mine, theirs = self.columns.get(name), other.columns.get(name)
            if mine is None or theirs is None:
                present = mine or theirs
                assert present is not None
                absent_rows = other.rows if mine is None else self.rows
                merged[name] = present.merge(_all_missing(present, absent_rows))
            else:
                merged[name] = mine.merge(theirs)
        return Profile(merged, self.rows + other.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": [column.to_dict() for column in self.columns.values()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        columns = [ColumnProfile.from_dict(column) for column in data["columns"]]
        return cls({column.name: column for column in columns}, int(data["rows"]))


@dataclass(frozen=True)
class ReferenceProfile:
    """What a model version is monitored against: its training inputs and its scores on held-out rows."""

    inputs: Profile
    scores: Profile | None = None

    def to_json(self) -> bytes:
        data = {"inputs": self.inputs.to_dict(), "scores": self.scores.to_dict() if self.scores else None}
        return json.dumps(data, allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ReferenceProfile:
        values = json.loads(data)
        scores = values.get("scores")
        return cls(Profile.from_dict(values["inputs"]), Profile.from_dict(scores) if scores else None)


def profile_frame(
    frame: pd.DataFrame,
    *,
    reference: Profile | None = None,
    columns: Sequence[str] | None = None,
    categorical: Iterable[str] = (),
    bins: int = DEFAULT_BINS,
) -> Profile:
    """Profile `frame`: as a reference (its own quantile bins), or as a window of `reference` (its bins and
    kinds). `categorical` names numeric-looking columns to treat as categories (codes, ids)."""
    if bins < 1:
        raise ValidationError(f"bins must be at least 1, got {bins}.")
    names = list(columns) if columns is not None else list(reference.columns if reference else frame.columns)
    absent = [name for name in names if name not in frame.columns]
    if absent and reference is None:
        raise ValidationError(f"Column(s) {absent} are not in the data; it has {list(frame.columns)}.")
    forced = set(categorical)
    profiles = {}
    for name in names:
        values = frame[name] if name in frame.columns else pd.Series([None] * len(frame), dtype=object)
        base = reference.columns.get(name) if reference is not None else None
        profiles[name] = _profile_column(name, values, base, name in forced, bins)
    return Profile(profiles, len(frame))


def profile_parquet(
    path: str | Path,
    *,
    reference: Profile,
    columns: Sequence[str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Profile:
    """Profile a Parquet file or directory against `reference`, one batch at a time: memory follows the batch,
    not the data (a 10M-row window costs what a `batch_rows` one does)."""
    import pyarrow.dataset as ds

    names = list(columns) if columns is not None else list(reference.columns)
    # No pre-buffering and one thread: Arrow otherwise reads ahead whole row groups and held 1.2 GB more at
    # the peak of a 10M-row file.
    unbuffered = ds.ParquetFileFormat(
        default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False)
    )
    dataset = ds.dataset(path, format=unbuffered)
    present = [name for name in names if name in dataset.schema.names]
    total: Profile | None = None
    for batch in dataset.to_batches(
        columns=present, batch_size=batch_rows, batch_readahead=1, fragment_readahead=1, use_threads=False
    ):
        part = profile_frame(batch.to_pandas(), reference=reference, columns=names)
        total = part if total is None else total.merge(part)
    return total if total is not None else profile_frame(pd.DataFrame(), reference=reference, columns=names)


def _profile_column(
    name: str, values: pd.Series, reference: ColumnProfile | None, categorical: bool, bins: int
) -> ColumnProfile:
    missing_mask = values.isna()
    present = values[~missing_mask]
    missing = int(missing_mask.sum())
    kind = reference.kind if reference is not None else (CATEGORICAL if categorical else _kind_of(present))
    if kind == CATEGORICAL:
        return _categorical(name, present, len(values), missing)
    numbers = _as_numbers(present)
    finite = numbers[np.isfinite(numbers)]
    invalid = len(present) - len(finite)  # text in a numeric column, or ±inf
    edges = reference.edges if reference is not None else _quantile_edges(finite, bins)
    assert edges is not None
    bins_of = np.searchsorted(edges, finite, side="left")
    counts = np.bincount(bins_of, minlength=len(edges) + 1)
    sums = np.bincount(bins_of, weights=finite, minlength=len(edges) + 1)
    mean = float(finite.mean()) if len(finite) else 0.0
    return ColumnProfile(
        name,
        NUMERIC,
        rows=len(values),
        missing=missing,
        invalid=invalid,
        edges=edges,
        counts=counts.astype(np.int64),
        sums=sums,
        below=int((finite < edges[0]).sum()) if len(edges) else 0,
        minimum=float(finite.min()) if len(finite) else None,
        maximum=float(finite.max()) if len(finite) else None,
        mean=mean,
        m2=float(((finite - mean) ** 2).sum()) if len(finite) else 0.0,
    )


def _categorical(name: str, present: pd.Series, rows: int, missing: int) -> ColumnProfile:
    mixed = False
    if pd.api.types.is_object_dtype(present) and len(present):
        text = present.iloc[:MIXED_SAMPLE].map(lambda v: isinstance(v, str))
        mixed = bool(text.any() and not text.all())
    categories: dict[str, int] = {}
    for value, n in present.value_counts(sort=False).items():  # 1 and "1" are one category
        key = str(value)
        categories[key] = categories.get(key, 0) + int(n)
    return ColumnProfile(
        name, CATEGORICAL, rows=rows, missing=missing, categories=_capped(categories), mixed=mixed
    )


def _kind_of(present: pd.Series) -> str:
    """Numeric for numbers (an object column only when every value is a number), categorical otherwise."""
    if pd.api.types.is_bool_dtype(present):
        return CATEGORICAL
    if pd.api.types.is_numeric_dtype(present):
        return NUMERIC
    if pd.api.types.is_object_dtype(present) and len(present):
        numbers = present.map(lambda v: isinstance(v, int | float | np.number) and not isinstance(v, bool))
        return NUMERIC if bool(numbers.all()) else CATEGORICAL
    return CATEGORICAL


def _as_numbers(present: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present):
        return present.to_numpy(dtype=float)
    return pd.to_numeric(present.map(lambda v: None if isinstance(v, bool) else v), errors="coerce").to_numpy(
        dtype=float
    )


def _quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    if not len(values):
        return np.zeros(0)
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))


def _capped(categories: dict[str, int]) -> dict[str, int]:
    if len(categories) <= MAX_CATEGORIES:
        return categories
    ranked = sorted(categories.items(), key=lambda item: -item[1])
    kept = dict(ranked[: MAX_CATEGORIES - 1])
    kept[OTHER] = kept.get(OTHER, 0) + sum(n for _, n in ranked[MAX_CATEGORIES - 1 :])
    return kept


def _all_missing(like: ColumnProfile, rows: int) -> ColumnProfile:
    return replace(
        like,
        rows=rows,
        missing=rows,
        invalid=0,
        counts=np.zeros_like(like.counts) if like.counts is not None else None,
        sums=np.zeros_like(like.sums) if like.sums is not None else None,
        below=0,
        minimum=None,
        maximum=None,
        mean=0.0,
        m2=0.0,
        categories={},
        mixed=False,
    )


def _same_edges(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool(np.array_equal(a, b))


def _extreme(pick: Any, a: float | None, b: float | None) -> float | None:
    present = [v for v in (a, b) if v is not None]
    return pick(present) if present else None
