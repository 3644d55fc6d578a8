"""Experiment tracking: runs with params, metrics, tags, artifacts, datasets and the environment they ran in.

Logging never waits for the database: `log_metric`, `log_param` and `set_tag` check their arguments and queue
them for the background writer (`tracking_writer`). `flush()`, `end_run()`, `close()` and interpreter exit write
everything queued; a value the database refuses for good is raised by the next logging call or flush().
"""

from __future__ import annotations

import math
import operator
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from loopml.clock import as_utc
from loopml.data.tables import datasets
from loopml.errors import LoopmlError, NotFoundError, ValidationError
from loopml.storage.artifact_refs import StoredFile, add_refs, artifact_refs, delete_unreferenced
from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import MetadataStore
from loopml.training.environment import capture_environment, code_version
from loopml.training.keys import check_key
from loopml.training.run_deletion import (
    DeletionPlan,
    RunUsageCheck,
    delete_run_rows,
    plan_deletion,
)
from loopml.training.run_search import (
    MetricPoint,
    Run,
    RunPage,
    get_run,
    metric_history,
    search_runs,
)
from loopml.training.tables import run_params, run_tags, runs
from loopml.training.tracking_writer import METRIC, PARAM, TAG, TrackingWriter

__all__ = ["DeletionPlan", "MetricPoint", "Run", "RunPage", "Tracker", "code_version"]

# Params and tags are indexed by (key, value), and PostgreSQL's btree rows stop near 2.7 kB.
MAX_VALUE_BYTES = 2000
MAX_ARTIFACT_PATH = 500
RUN_STATUSES = ("finished", "failed", "killed")


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
        usage_checks: Sequence[RunUsageCheck] = (),
    ) -> None:
        if batch_size < 1 or max_queue < batch_size:
            raise ValidationError(
                f"Tracker needs batch_size >= 1 and max_queue >= batch_size, got {batch_size} and {max_queue}."
            )
        self.metadata = metadata
        self.artifacts = artifacts
        self.capture_environment = capture_environment
        self.usage_checks = list(usage_checks)
        self._writer = TrackingWriter(metadata, batch_size, flush_seconds, max_queue, idle_seconds)
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
        self._writer.put((METRIC, run_id, key, number, 0 if step is None else operator.index(step), moment))

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
            items.append((METRIC, run_id, key, _metric_value(key, value), step, moment))
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
        self._writer.put_many([(PARAM, run_id, key, value, 0, None) for key, value in new.items()])

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        self.set_tags(run_id, {key: value})

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Queue tags (stringified); a tag, unlike a param, may be set again to a new value."""
        if run_id not in self._params:
            self._load_run(run_id)
        items = [(TAG, run_id, key, self._tag_value(key, value), 0, None) for key, value in tags.items()]
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
        delete_unreferenced(self.metadata, self.artifacts, old)
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
            return plan_deletion(conn, run_id, recursive, self.usage_checks)

    def delete_run(self, run_id: str, *, recursive: bool = False) -> DeletionPlan:
        """Delete a run with its params, metrics, tags, artifacts and pipeline runs (and step runs).

        Refused while a model version was registered from it (or from a child), and when it has child runs
        unless `recursive`. Blobs no other owner references are deleted once the transaction has committed.
        """
        self.flush()
        plan, released = delete_run_rows(
            self.metadata,
            run_id,
            recursive=recursive,
            artifacts=self.artifacts,
            usage_checks=self.usage_checks,
        )
        for deleted in plan.run_ids:
            self._params.pop(deleted, None)
        deleted_blobs = delete_unreferenced(self.metadata, self.artifacts, released) if self.artifacts else []
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
        check_key(key, kind)
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
