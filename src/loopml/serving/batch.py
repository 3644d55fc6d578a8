"""Batch scoring: a model version over a Parquet dataset, through the server's own scoring code.

Rows are read in chunks (memory stays bounded whatever the input), checked and scored by the same `Scorer`
the server uses, so a row gets the same number in batch as online. The output appears whole or not at all:
it is written to a temporary file renamed into place at the end. With `fill_cache`, every entity's
prediction then goes into the online store, where an endpoint with a cache max age answers from it.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from loopml.errors import NotFoundError, ValidationError
from loopml.features.on_demand import plan_features
from loopml.features.registry import get_view
from loopml.registry.models import ModelVersion
from loopml.serving import prediction_cache
from loopml.serving.endpoints import NAN_POLICIES
from loopml.serving.router import input_roles
from loopml.serving.scoring import Scorer, nullable_inputs

if TYPE_CHECKING:
    from loopml.project import Project

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 100_000
OUTPUT_COLUMNS = ("prediction", "model_name", "model_version", "scored_at")


class BatchProgress(Protocol):
    """What a caller (the CLI's progress bar) hears while a batch is scored."""

    def started(self, total_rows: int) -> None: ...

    def rows_scored(self, rows: int) -> None: ...

    def cache_filling(self) -> None: ...


@dataclass(frozen=True)
class BatchResult:
    """What a batch run did: the version it ran, rows scored, where they went and how long it took."""

    model_name: str
    model_version: int
    rows: int
    chunks: int
    output: Path
    scored_at: datetime
    seconds: float
    cache_written: int = 0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Model:
    """A version loaded for batch scoring, with what it reads from the feature store."""

    version: ModelVersion
    scorer: Scorer
    stored: frozenset[str]  # inputs that are stored features (read online by the server)
    request: tuple[str, ...]  # inputs sent with requests (the model's and on-demand views')
    join_keys: tuple[str, ...]


def batch_score(
    project: Project,
    model_ref: str,
    input_path: str | Path,
    output_path: str | Path,
    *,
    fill_cache: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    nan_policy: str = "stored",
    keep: Sequence[str] = (),
    progress: BatchProgress | None = None,
) -> BatchResult:
    """Score every row of `input_path` (a Parquet file, a directory of them or a glob) with `model_ref`
    ('name@alias' or 'name/version') and write the predictions to `output_path` (Parquet).

    The input holds the model's inputs as columns (stored features included, e.g. a training set from
    `get_historical_features`); the output holds the entity join keys when the input has them, the columns
    named in `keep`, then `prediction`, `model_name`, `model_version` and `scored_at` (when the run started).
    `nan_policy` is the endpoints' one: 'stored' (the default) lets a stored feature be null (it reaches the
    model as NaN) and refuses a null request-time input, 'reject' refuses every null, 'allow' refuses none.
    `fill_cache` then writes each entity's prediction to the online store (the last row of an entity wins);
    it needs the join keys and a model whose inputs are all stored features.
    """
    if not isinstance(chunk_rows, int) or chunk_rows <= 0:
        raise ValidationError(f"chunk_rows must be a positive number of rows, got {chunk_rows!r}.")
    if nan_policy not in NAN_POLICIES:
        raise ValidationError(f"nan_policy is {nan_policy!r}; use one of {', '.join(NAN_POLICIES)}.")
    started = time.perf_counter()
    scored_at = project.clock.now()
    version = project.registry.resolve(model_ref)
    model = _load(project, version, need_keys=fill_cache)
    dataset = open_dataset(input_path)
    keys = [k for k in model.join_keys if k in dataset.schema.names]
    _check_columns(model, dataset.schema, input_path, keys, list(keep), fill_cache)
    output = Path(output_path)
    passed = list(dict.fromkeys([*keys, *keep]))
    if progress is not None:
        progress.started(dataset.count_rows())
    cached = 0
    with _replaced_whole(output) as temp:
        rows, chunks = _write_predictions(
            model,
            dataset,
            temp,
            passed,
            nullable_inputs(nan_policy, model.scorer.names, model.stored),
            chunk_rows,
            scored_at,
            fill_cache,
            progress,
        )
        if fill_cache:
            if progress is not None:
                progress.cache_filling()
            cached = _fill_cache(project, version, temp, keys, chunk_rows, scored_at)
    result = BatchResult(
        version.model_name,
        version.version,
        rows,
        chunks,
        output,
        scored_at,
        time.perf_counter() - started,
        cached,
    )
    logger.info(
        "Scored %d rows with %s in %.2f s (%d cached) into %s",
        rows,
        version.ref,
        result.seconds,
        cached,
        output,
    )
    return result


def open_dataset(input_path: str | Path) -> pads.Dataset:
    """A Parquet file, a directory of Parquet files (hive partitions read as columns) or a glob of files."""
    text = str(input_path)
    if any(char in text for char in "*?["):
        files = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        if not files:
            raise NotFoundError(f"No file matches {text!r}; check the pattern (e.g. data/part-*.parquet).")
        source: str | list[str] = files
    elif not os.path.exists(text):
        raise NotFoundError(f"Input {text!r} does not exist; give a Parquet file, a directory or a glob.")
    else:
        source = text
    try:
        return pads.dataset(source, format="parquet", partitioning="hive")
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationError(f"Input {text!r} is not readable as Parquet: {exc}") from exc


def _load(project: Project, version: ModelVersion, *, need_keys: bool) -> _Model:
    """The version's model and scorer, built as the server builds them, and its feature views' join keys."""
    model = project.registry.load(version)
    scorer = Scorer.build(version.ref, model, project.registry.model_file(version).signature, version.inputs)
    try:
        plan = plan_features(version.features, lambda name: get_view(project.metadata, name, project.path))
    except NotFoundError as exc:
        if need_keys:
            raise
        logger.warning("Batch output of %s carries no entity keys: %s", version.ref, exc)
        keys: tuple[str, ...] = ()
        request_fields: list[str] = []
    else:
        keys = tuple(dict.fromkeys(key for view, _ in plan.views for key in view.join_keys))
        request_fields = plan.request_fields
    stored, request = input_roles(version, request_fields)
    return _Model(version, scorer, frozenset(stored) & scorer.names, request, keys)


def _check_columns(
    model: _Model,
    schema: pa.Schema,
    input_path: str | Path,
    keys: list[str],
    keep: list[str],
    fill_cache: bool,
) -> None:
    names = schema.names
    ref = model.version.ref
    missing = [name for name in model.scorer.input_names if name not in names]
    if missing:
        raise ValidationError(
            f"Input {str(input_path)!r} lacks model input(s) {missing} of {ref}; it has {names}. Add the "
            f"columns (all of {model.scorer.input_names}; stored features e.g. from get_historical_features)."
        )
    absent = [name for name in keep if name not in names]
    if absent:
        raise ValidationError(f"Column(s) {absent} to keep are not in {str(input_path)!r}; it has {names}.")
    clash = [name for name in keep if name in OUTPUT_COLUMNS]
    if clash:
        raise ValidationError(f"Column(s) {clash} would clash with the output's own {list(OUTPUT_COLUMNS)}.")
    if not fill_cache:
        return
    if model.request:
        raise ValidationError(
            f"Model {ref} takes request-time inputs {list(model.request)} that are not stored features; a cached "
            "prediction cannot depend on per-request values, so it cannot fill the cache. Score without "
            "fill_cache."
        )
    if not model.join_keys:
        raise ValidationError(f"Model {ref} reads no feature view, so it has no entity keys to cache by.")
    if len(keys) < len(model.join_keys):
        lacking = [k for k in model.join_keys if k not in keys]
        raise ValidationError(
            f"Filling the cache needs the entity key column(s) {lacking} of {ref}; {str(input_path)!r} has "
            f"{names}. Add them to the input."
        )
    for key in keys:
        kind = schema.field(key).type
        if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ValidationError(
                f"Entity key '{key}' is {kind} in {str(input_path)!r}; the cache (like the server) keys by "
                "integers or strings. Cast the column."
            )
    if model.scorer.is_classifier and len(model.scorer.classes or ()) > 2:
        raise ValidationError(
            f"Model {ref} is a multi-class classifier: its prediction is a vector, the cache holds one number."
        )


@contextlib.contextmanager
def _replaced_whole(output: Path) -> Iterator[Path]:
    """A temporary file beside `output` that replaces it when the block succeeds and is removed otherwise."""
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.tmp")  # a dot: readers skip it
    try:
        yield temp
        os.replace(temp, output)
    finally:
        temp.unlink(missing_ok=True)


def _write_predictions(
    model: _Model,
    dataset: pads.Dataset,
    path: Path,
    passed: list[str],
    nullable: frozenset[str],
    chunk_rows: int,
    scored_at: datetime,
    fill_cache: bool,
    progress: BatchProgress | None,
) -> tuple[int, int]:
    """Score the dataset chunk by chunk into a Parquet file; returns the rows and chunks scored."""
    rows = chunks = 0
    keys = [k for k in model.join_keys if k in passed]
    writer: pq.ParquetWriter | None = None
    try:
        for chunk in _chunks(dataset, list(dict.fromkeys([*model.scorer.input_names, *passed])), chunk_rows):
            if fill_cache:
                _check_keys(chunk, keys, rows)
            predictions = _score(model, chunk, nullable, f" of the chunk from input row {rows:,}")
            table = _output_table(chunk, passed, predictions, model.version, scored_at)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            rows += chunk.num_rows
            chunks += 1
            if progress is not None:
                progress.rows_scored(chunk.num_rows)
        if writer is None:  # no rows: an empty file with the output's columns
            empty = pa.table({name: pa.array([], dataset.schema.field(name).type) for name in passed})
            schema = _output_table(empty, passed, np.empty(0), model.version, scored_at).schema
            writer = pq.ParquetWriter(path, schema)
    finally:
        if writer is not None:
            writer.close()
    return rows, chunks


def _chunks(dataset: pads.Dataset, columns: list[str], chunk_rows: int) -> Iterator[pa.Table]:
    """The needed columns in tables of `chunk_rows` rows (the last one shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in dataset.to_batches(columns=columns, batch_size=chunk_rows):
        pending.append(batch)
        count += batch.num_rows
        while count >= chunk_rows:
            table = pa.Table.from_batches(pending, schema=batch.schema)
            yield table.slice(0, chunk_rows).combine_chunks()
            rest = table.slice(chunk_rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending).combine_chunks()


def _score(model: _Model, chunk: pa.Table, nullable: frozenset[str], where: str) -> np.ndarray:
    """The server's path: request columns as Python values → checked frame → scores."""
    scorer = model.scorer
    columns = {name: chunk.column(name).to_pylist() for name in scorer.input_names}
    frame = scorer.frame(columns, chunk.num_rows, nullable=nullable, where=where)
    try:
        return scorer.scores(frame)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValidationError(f"Model {model.version.ref} could not score the rows{where}: {exc}") from exc


def _output_table(
    chunk: pa.Table, passed: list[str], predictions: np.ndarray, version: ModelVersion, scored_at: datetime
) -> pa.Table:
    rows = chunk.num_rows
    if predictions.ndim == 2:  # a multi-class model's probabilities, one list per row
        prediction = pa.array(list(predictions), pa.list_(pa.float64()))
    else:
        prediction = pa.array(predictions, pa.float64())
    data = {name: chunk.column(name) for name in passed}
    data["prediction"] = prediction
    data["model_name"] = pa.array([version.model_name] * rows, pa.string())
    data["model_version"] = pa.array(np.full(rows, version.version), pa.int64())
    data["scored_at"] = pa.array([scored_at] * rows, pa.timestamp("us", tz="UTC"))
    return pa.table(data)


def _check_keys(chunk: pa.Table, keys: list[str], offset: int) -> None:
    for key in keys:
        column = chunk.column(key)
        if column.null_count:
            row = column.to_pylist().index(None)
            raise ValidationError(
                f"Entity key '{key}' is null in input row {offset + row:,}; a cached prediction needs its entity."
            )


def _fill_cache(
    project: Project,
    version: ModelVersion,
    scored: Path,
    keys: list[str],
    chunk_rows: int,
    scored_at: datetime,
) -> int:
    """Write the scored file's predictions to the online store, by entity, chunk by chunk."""
    written = 0
    for batch in pq.ParquetFile(scored).iter_batches(batch_size=chunk_rows, columns=[*keys, "prediction"]):
        entities = list(zip(*(batch.column(k).to_pylist() for k in keys), strict=True))
        outputs = batch.column("prediction").to_numpy()
        written += prediction_cache.write_cached(
            project.online, version, entities, outputs.tolist(), scored_at=scored_at
        )
    return written
