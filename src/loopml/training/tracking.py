"""Experiment tracking: runs with params, metrics, tags, artifacts, datasets and the environment they ran in.

Logging never waits for the database. `log_metric`, `log_param` and `set_tag` check their arguments, append to
an in-memory queue and return; a writer thread drains the queue in batches, one transaction per batch, and
keeps each run's latest metric values up to date. The queue is bounded (`max_queue` values): when training
logs faster than the database takes them, the caller waits for room rather than losing values it was told
were taken; while the database is failing, a caller finding the queue full gets StoreUnavailableError
instead (its value was not taken). `flush()`, `end_run()`, `close()` and interpreter exit write everything
queued. A value the database refuses for good (its run was deleted meanwhile, a param another process set
to a different value) is reported by the next logging call or flush() of this tracker, never silently lost.
"""

from __future__ import annotations

import atexit
import collections
import logging
import math
import operator
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, insert, or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from loopml.clock import as_utc
from loopml.data.tables import datasets
from loopml.errors import LoopmlError, NotFoundError, StoreUnavailableError, ValidationError
from loopml.storage.artifact_refs import StoredFile, add_refs, artifact_refs, release
from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import MetadataStore
from loopml.training.environment import capture_environment, code_version
from loopml.training.run_search import (
    MetricPoint,
    Run,
    RunPage,
    get_run,
    metric_history,
    search_runs,
)
from loopml.training.tables import (
    pipeline_runs,
    run_latest_metrics,
    run_metrics,
    run_params,
    run_tags,
    runs,
    step_runs,
)

__all__ = ["DeletionPlan", "MetricPoint", "Run", "RunPage", "Tracker", "code_version"]

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 250
# Params and tags are indexed by (key, value), and PostgreSQL's btree rows stop near 2.7 kB.
MAX_VALUE_BYTES = 2000
MAX_ARTIFACT_PATH = 500
RUN_STATUSES = ("finished", "failed", "killed")

_METRIC, _PARAM, _TAG = 0, 1, 2
_KIND_NAMES = {_METRIC: "metric", _PARAM: "param", _TAG: "tag"}


@dataclass(frozen=True)
class DeletionPlan:
    """What deleting a run removes: runs (it and its descendants), pipeline runs, and blobs nobody else uses."""

    run_ids: list[str]
    pipeline_run_ids: list[str]
    artifact_paths: int
    blobs: list[str] = field(default_factory=list)


class Tracker:
    """Records runs in the metadata store (and their files in the artifact store).

    `batch_size` values make one transaction; a smaller batch is written after `flush_seconds`. The writer
    thread starts with the first logged value and ends after `idle_seconds` without any.
    """

    def __init__(
        self,
        metadata: MetadataStore,
        artifacts: ArtifactStore | None = None,
        *,
        capture_environment: bool = True,
        batch_size: int = 2000,
        flush_seconds: float = 0.5,
        max_queue: int = 200_000,
        idle_seconds: float = 5.0,
    ) -> None:
        if batch_size < 1 or max_queue < batch_size:
            raise ValidationError(
                f"Tracker needs batch_size >= 1 and max_queue >= batch_size, got {batch_size} and {max_queue}."
            )
        self.metadata = metadata
        self.artifacts = artifacts
        self.capture_environment = capture_environment
        self._writer = _Writer(metadata, batch_size, flush_seconds, max_queue, idle_seconds)
        self._params: dict[str, dict[str, str]] = {}  # runs known to exist → params logged so far
        self._keys: set[str] = set()  # keys already validated

    # ------------------------------------------------------------------------------------------ run life

    def start_run(
        self,
        pipeline: str,
        params: Mapping[str, Any],
        code: dict[str, Any],
        *,
        name: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        code_dir: Path | None = None,
    ) -> str:
        """Create a running run with its params and tags, capturing the environment; returns its id."""
        param_values = {key: self._param_value(key, value) for key, value in params.items()}
        tag_values = {key: self._tag_value(key, value) for key, value in (tags or {}).items()}
        environment = capture_environment(code_dir, code) if self.capture_environment else None
        run_id = str(uuid.uuid4())
        with self.metadata.begin() as conn:
            if parent_run_id is not None:
                _require_run(conn, parent_run_id, what="parent run")
            conn.execute(
                insert(runs).values(
                    id=run_id,
                    pipeline=pipeline,
                    name=name,
                    parent_run_id=parent_run_id,
                    status="running",
                    code_version=code,
                    environment=environment,
                    started_at=self.metadata.clock.now(),
                )
            )
            if param_values:
                conn.execute(
                    insert(run_params),
                    [{"run_id": run_id, "key": k, "value": v} for k, v in param_values.items()],
                )
            if tag_values:
                conn.execute(
                    insert(run_tags),
                    [{"run_id": run_id, "key": k, "value": v} for k, v in tag_values.items()],
                )
            self.metadata.record_event(
                conn,
                kind="run.started",
                subject=f"run:{run_id}",
                reason=f"pipeline '{pipeline}' started",
                data={"pipeline": pipeline, "code_version": code, "parent_run_id": parent_run_id},
            )
        self._params[run_id] = dict(param_values)
        return run_id

    def end_run(self, run_id: str, status: str = "finished", error: str | None = None) -> None:
        """Write what is still queued, then mark the run ended; a write failure is raised after the status
        is set."""
        if status not in RUN_STATUSES:
            raise ValidationError(f"Run status must be one of {', '.join(RUN_STATUSES)}, got {status!r}.")
        failure: LoopmlError | None = None
        try:
            self.flush()
        except LoopmlError as exc:
            failure = exc
        with self.metadata.begin() as conn:
            updated = conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(status=status, ended_at=self.metadata.clock.now(), error=error)
            )
            if updated.rowcount == 0:
                raise NotFoundError(f"No run with id '{run_id}' to end; was it deleted?")
            self.metadata.record_event(
                conn,
                kind=f"run.{status}",
                subject=f"run:{run_id}",
                reason=error or f"run {status}",
                data={"status": status},
            )
        self._params.pop(run_id, None)
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------------------------------- logging

    def log_metric(
        self,
        run_id: str,
        key: str,
        value: float,
        step: int | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        """Queue one metric value (step 0 unless given; logged now unless `timestamp` says otherwise).

        NaN is refused (SQLite cannot store it); ±inf is stored as is.
        """
        if key not in self._keys:
            self._check_key(key, "metric")
        if run_id not in self._params:
            self._load_run(run_id)
        number = _metric_value(key, value)
        moment = self.metadata.clock.now() if timestamp is None else as_utc(timestamp)
        self._writer.put((_METRIC, run_id, key, number, 0 if step is None else operator.index(step), moment))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Queue several metric values of one step (all checked before any is queued)."""
        if not metrics:
            return
        if run_id not in self._params:
            self._load_run(run_id)
        moment = self.metadata.clock.now()
        step = operator.index(step)
        items = []
        for key, value in metrics.items():
            if key not in self._keys:
                self._check_key(key, "metric")
            items.append((_METRIC, run_id, key, _metric_value(key, value), step, moment))
        self._writer.put_many(items)

    def log_param(self, run_id: str, key: str, value: Any) -> None:
        self.log_params(run_id, {key: value})

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Queue params (stringified). A param is immutable: logging another value for it is an error."""
        if run_id not in self._params:
            self._load_run(run_id)
        known = self._params[run_id]
        values = {key: self._param_value(key, value) for key, value in params.items()}
        for key, value in values.items():
            if known.get(key, value) != value:
                raise ValidationError(
                    f"Param '{key}' of run '{run_id}' is already {known[key]!r}; it cannot change to {value!r}. "
                    "Params are immutable: log the new value under another key, as a tag, or in a new run."
                )
        new = {key: value for key, value in values.items() if key not in known}
        known.update(new)
        self._writer.put_many([(_PARAM, run_id, key, value, 0, None) for key, value in new.items()])

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        self.set_tags(run_id, {key: value})

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Queue tags (stringified); a tag, unlike a param, may be set again to a new value."""
        if run_id not in self._params:
            self._load_run(run_id)
        items = [(_TAG, run_id, key, self._tag_value(key, value), 0, None) for key, value in tags.items()]
        self._writer.put_many(items)

    def flush(self, timeout: float | None = 60.0) -> None:
        """Wait until every value queued before this call is written; raise what could not be written."""
        self._writer.flush(timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        """Flush and stop the writer thread (a later logging call starts it again)."""
        self._writer.close(timeout)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------- datasets, artifacts

    def set_dataset(self, run_id: str, dataset_id: str) -> None:
        """The snapshot the run trained on: kept on the run and listed in its environment's datasets."""
        self._add_dataset(run_id, dataset_id, "training", primary=True)

    def log_dataset(self, run_id: str, dataset_id: str, context: str = "evaluation") -> None:
        """Another snapshot the run used (evaluation, test...), listed in its environment's datasets."""
        self._add_dataset(run_id, dataset_id, context, primary=False)

    def _add_dataset(self, run_id: str, dataset_id: str, context: str, *, primary: bool) -> None:
        with self.metadata.begin() as conn:
            environment = conn.execute(select(runs.c.environment).where(runs.c.id == run_id)).first()
            if environment is None:
                raise NotFoundError(f"No run with id '{run_id}'; list runs with `loopml runs list`.")
            snapshot = conn.execute(
                select(datasets.c.name, datasets.c.content_hash, datasets.c.n_rows).where(
                    datasets.c.id == dataset_id
                )
            ).first()
            if snapshot is None:
                raise NotFoundError(
                    f"No dataset snapshot with id '{dataset_id}'; see `loopml datasets list`."
                )
            recorded = dict(environment[0] or {})
            used = [d for d in recorded.get("datasets", []) if d.get("id") != dataset_id]
            used.append(
                {
                    "id": dataset_id,
                    "name": snapshot.name,
                    "content_hash": snapshot.content_hash,
                    "n_rows": snapshot.n_rows,
                    "context": context,
                }
            )
            values: dict[str, Any] = {"environment": {**recorded, "datasets": used}}
            if primary:
                values["dataset_id"] = dataset_id
            conn.execute(update(runs).where(runs.c.id == run_id).values(**values))

    def log_artifact(self, run_id: str, path: str, data: bytes | Path) -> dict[str, StoredFile]:
        """Store a file (bytes, a file, or every file under a directory) as `path` in the run's artifacts.

        Logging a path again replaces it; the old blob is deleted if nothing else references it.
        Returns path → stored file.
        """
        store = self._artifact_store("log artifacts")
        files = _artifact_files(path, data)
        stored = {name: StoredFile(store.put(content), len(content)) for name, content in files.items()}
        owner = f"run:{run_id}"
        with self.metadata.begin() as conn:
            _require_run(conn, run_id)
            replaced = conn.execute(
                select(artifact_refs.c.digest).where(
                    artifact_refs.c.owner == owner, artifact_refs.c.path.in_(list(stored))
                )
            ).scalars()
            old = set(replaced) - {f.digest for f in stored.values()}
            conn.execute(
                delete(artifact_refs).where(
                    artifact_refs.c.owner == owner, artifact_refs.c.path.in_(list(stored))
                )
            )
            add_refs(conn, owner, stored, self.metadata.clock.now())
        self._delete_unreferenced(old)
        return stored

    def load_artifact(self, run_id: str, path: str) -> bytes:
        """The bytes of one of the run's artifacts, checksum verified."""
        store = self._artifact_store("read artifacts")
        with self.metadata.begin() as conn:
            digest = conn.execute(
                select(artifact_refs.c.digest).where(
                    artifact_refs.c.owner == f"run:{run_id}", artifact_refs.c.path == path
                )
            ).scalar()
        if digest is None:
            raise NotFoundError(
                f"Run '{run_id}' has no artifact '{path}'; `loopml runs show {run_id}` lists them."
            )
        return store.get(digest)

    # ------------------------------------------------------------------------------------------- reading

    def get_run(self, run_id: str) -> Run:
        """The run in full (params, latest metrics, tags, environment, artifacts), after flushing."""
        self.flush()
        return get_run(self.metadata, run_id)

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        self.flush()
        return metric_history(self.metadata, run_id, key)

    def search_runs(
        self,
        filter: str = "",
        order_by: Sequence[str] = (),
        max_results: int = 100,
        pipeline: str | None = None,
        *,
        offset: int = 0,
    ) -> RunPage:
        """See `loopml.training.run_search.search_runs`; values this tracker queued are written first."""
        self.flush()
        return search_runs(self.metadata, filter, order_by, max_results, pipeline, offset=offset)

    # ------------------------------------------------------------------------------------------ deleting

    def plan_deletion(self, run_id: str, *, recursive: bool = False) -> DeletionPlan:
        """What `delete_run` would remove, or the error it would raise; nothing is changed."""
        with self.metadata.begin() as conn:
            return _plan_deletion(conn, run_id, recursive)

    def delete_run(self, run_id: str, *, recursive: bool = False) -> DeletionPlan:
        """Delete a run with its params, metrics, tags, artifacts and pipeline runs (and step runs).

        Refused while a model version was registered from it (or from a child), and when it has child runs
        unless `recursive`. Blobs no other owner references are deleted once the transaction has committed.
        """
        self.flush()
        with self.metadata.begin() as conn:
            plan = _plan_deletion(conn, run_id, recursive)
            if plan.blobs and self.artifacts is None:
                raise ValidationError(
                    f"Run '{run_id}' has artifacts; create the Tracker with artifacts=project.artifacts so their "
                    "files are deleted with it (nothing was deleted)."
                )
            released = _delete_runs(conn, plan)
            self.metadata.record_event(
                conn,
                kind="run.deleted",
                subject=f"run:{run_id}",
                reason=f"deleted with {len(plan.run_ids) - 1} child run(s) and "
                f"{len(plan.pipeline_run_ids)} pipeline run(s)",
                data={"run_ids": plan.run_ids, "pipeline_run_ids": plan.pipeline_run_ids},
            )
        for deleted in plan.run_ids:
            self._params.pop(deleted, None)
        deleted_blobs = self._delete_unreferenced(released)
        return DeletionPlan(plan.run_ids, plan.pipeline_run_ids, plan.artifact_paths, deleted_blobs)

    # ------------------------------------------------------------------------------------------- helpers

    def _load_run(self, run_id: str) -> None:
        """Remember a run this tracker did not start (and its params), or say it does not exist."""
        with self.metadata.begin() as conn:
            _require_run(conn, run_id)
            params = dict(
                conn.execute(
                    select(run_params.c.key, run_params.c.value).where(run_params.c.run_id == run_id)
                ).all()
            )
        self._params[run_id] = params

    def _check_key(self, key: Any, kind: str) -> None:
        if not isinstance(key, str) or not key:
            raise ValidationError(f"A {kind} name must be a non-empty string, got {key!r}.")
        if len(key) > MAX_KEY_LENGTH:
            raise ValidationError(
                f"{kind.capitalize()} name '{key[:40]}...' has {len(key)} characters; the limit is {MAX_KEY_LENGTH}."
            )
        if key != key.strip():
            raise ValidationError(
                f"{kind.capitalize()} name {key!r} starts or ends with white space; strip it so searches find it."
            )
        self._keys.add(key)

    def _param_value(self, key: str, value: Any) -> str:
        return self._text_value(key, value, "param")

    def _tag_value(self, key: str, value: Any) -> str:
        return self._text_value(key, value, "tag")

    def _text_value(self, key: str, value: Any, kind: str) -> str:
        if key not in self._keys:
            self._check_key(key, kind)
        text_value = value if isinstance(value, str) else str(value)
        size = len(text_value.encode())
        if size > MAX_VALUE_BYTES:
            raise ValidationError(
                f"{kind.capitalize()} '{key}' is {size} bytes long; {kind} values are indexed for search and "
                f"limited to {MAX_VALUE_BYTES} bytes. Log it as a file with log_artifact(run_id, '{key}.txt', ...)."
            )
        return text_value

    def _artifact_store(self, doing: str) -> ArtifactStore:
        if self.artifacts is None:
            raise ValidationError(f"To {doing}, create the Tracker with artifacts=project.artifacts.")
        return self.artifacts

    def _delete_unreferenced(self, digests: Iterable[str]) -> list[str]:
        """Delete the blobs among `digests` that no owner references (checked again, after the commit)."""
        candidates = set(digests)
        if not candidates or self.artifacts is None:
            return []
        with self.metadata.begin() as conn:
            used = set(
                conn.execute(
                    select(artifact_refs.c.digest).where(artifact_refs.c.digest.in_(candidates))
                ).scalars()
            )
        unused = sorted(candidates - used)
        for digest in unused:
            self.artifacts.delete(digest)
        return unused


# ---------------------------------------------------------------------------------------------- validation


def _metric_value(key: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"Metric '{key}' must be a number, got {value!r}.") from exc
    if math.isnan(number):
        raise ValidationError(
            f"Metric '{key}' is NaN; NaN is not stored (it cannot be compared or sorted). Check the training "
            "for divergence, or skip the value (math.isnan) if it is expected."
        )
    return number


def _require_run(conn: Connection, run_id: str, what: str = "run") -> None:
    if conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is None:
        raise NotFoundError(f"No {what} with id '{run_id}'; list runs with `loopml runs list`.")


def _artifact_files(path: str, data: bytes | Path) -> dict[str, bytes]:
    """path → content; a directory gives one entry per file below it, under `path/`."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or "\\" in path or ".." in parts or len(path) > MAX_ARTIFACT_PATH:
        raise ValidationError(
            f"Artifact path {path!r} must be relative, without '..' or backslashes, and at most "
            f"{MAX_ARTIFACT_PATH} characters (e.g. 'plots/roc.png')."
        )
    clean = str(PurePosixPath(*parts))
    if isinstance(data, bytes | bytearray | memoryview):
        return {clean: bytes(data)}
    source = Path(data)
    if source.is_dir():
        files = {
            f"{clean}/{file.relative_to(source).as_posix()}": file.read_bytes()
            for file in sorted(source.rglob("*"))
            if file.is_file()
        }
        if not files:
            raise ValidationError(f"Directory {source} holds no files to log as artifact '{clean}'.")
        return files
    if not source.is_file():
        raise NotFoundError(f"No file {source} to log as artifact '{clean}'.")
    return {clean: source.read_bytes()}


# ------------------------------------------------------------------------------------------------ deletion


def _plan_deletion(conn: Connection, run_id: str, recursive: bool) -> DeletionPlan:
    _require_run(conn, run_id)
    run_ids, frontier = [run_id], [run_id]
    while frontier:
        children = list(conn.execute(select(runs.c.id).where(runs.c.parent_run_id.in_(frontier))).scalars())
        if children and not recursive:
            raise ValidationError(
                f"Run '{run_id}' has {len(children)} child run(s) ({', '.join(children[:3])}"
                f"{', ...' if len(children) > 3 else ''}); delete them with it with recursive=True "
                "(`loopml runs delete --recursive`), or delete them first."
            )
        run_ids.extend(children)
        frontier = children
    versions = conn.execute(
        text("SELECT model_name, version, run_id FROM model_versions WHERE run_id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        ),
        {"ids": run_ids},
    ).all()
    if versions:
        refs = ", ".join(f"{name}/{version} (run {source})" for name, version, source in versions[:5])
        raise ValidationError(
            f"Run '{run_id}' cannot be deleted: model version(s) {refs} were registered from it and keep it as "
            "their lineage. Delete those versions first, or keep the run."
        )
    pipeline_run_ids = list(
        conn.execute(
            select(pipeline_runs.c.id).where(pipeline_runs.c.run_id.in_(run_ids)).order_by(pipeline_runs.c.id)
        ).scalars()
    )
    owners = [f"run:{r}" for r in run_ids] + [f"pipeline_run:{p}" for p in pipeline_run_ids]
    files = (
        conn.execute(select(artifact_refs.c.digest).where(artifact_refs.c.owner.in_(owners))).scalars().all()
    )
    shared = conn.execute(
        select(artifact_refs.c.digest).where(
            artifact_refs.c.digest.in_(set(files)), artifact_refs.c.owner.not_in(owners)
        )
    ).scalars()
    return DeletionPlan(run_ids, pipeline_run_ids, len(files), sorted(set(files) - set(shared)))


def _delete_runs(conn: Connection, plan: DeletionPlan) -> set[str]:
    """Delete the planned rows; returns the digests no owner references any more."""
    released: set[str] = set()
    for pipeline_run_id in plan.pipeline_run_ids:
        released.update(release(conn, f"pipeline_run:{pipeline_run_id}"))
    for run_id in plan.run_ids:
        released.update(release(conn, f"run:{run_id}"))
    if plan.pipeline_run_ids:
        conn.execute(delete(step_runs).where(step_runs.c.pipeline_run_id.in_(plan.pipeline_run_ids)))
        conn.execute(delete(pipeline_runs).where(pipeline_runs.c.id.in_(plan.pipeline_run_ids)))
    for table in (run_metrics, run_latest_metrics, run_params, run_tags):
        conn.execute(delete(table).where(table.c.run_id.in_(plan.run_ids)))
    # Unlink the runs from their parents first, so no row points at a run already gone, whatever the order.
    conn.execute(update(runs).where(runs.c.id.in_(plan.run_ids)).values(parent_run_id=None))
    conn.execute(delete(runs).where(runs.c.id.in_(plan.run_ids)))
    return released


# ------------------------------------------------------------------------------------------ background writer


@dataclass
class _FlushRequest:
    remaining: int = 0  # values still to write before this request is answered
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


_LIVE_WRITERS: weakref.WeakSet[_Writer] = weakref.WeakSet()


class _Writer:
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
        if kind == _METRIC:
            history.append((run_id, key, step, value, stored_time(ts)))
            current = latest.get((run_id, key))
            if current is None or (step, ts) >= current[:2]:
                latest[(run_id, key)] = (step, ts, value)
        elif kind == _PARAM:
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
