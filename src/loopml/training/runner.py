"""Running a pipeline: unchanged steps come from the cache, outputs are stored, every step is recorded.

A step's cache key is the sha256 of its name, its code hash (its own code and the local helpers it reaches),
the parameters it takes, the digests of its inputs, its output names and the installed packages. A step is
skipped ("cached") when a succeeded step run with that key exists and its artifacts are still stored; a step
taking an injected resource (the project: data the key cannot see) runs every time unless declared cached. Every step reads its inputs back
from the artifact store, so it sees the same value whether the step upstream ran or came from the cache.

A failed run is marked failed and can be resumed under the same id: steps that succeeded keep their outputs
(unless their code, parameters or inputs changed since), and the failed step and those after it run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import traceback
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from sqlalchemy import Connection, case, delete, insert, select, update

from loopml.errors import LoopmlError, NotFoundError, ValidationError
from loopml.storage.artifact_refs import StoredFile, add_refs, artifact_refs, delete_unreferenced, release
from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import MetadataStore
from loopml.training.code_hash import code_hash
from loopml.training.environment import installed_packages
from loopml.training.step_artifacts import StoredOutput, load_output, save_output
from loopml.training.steps import Pipeline, Step
from loopml.training.tables import pipeline_runs, step_runs
from loopml.training.tracking import Tracker, code_version

logger = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED, CACHED = "running", "succeeded", "failed", "cached"


class StepFailedError(LoopmlError):
    """A step raised; its run is recorded as failed and can be resumed."""

    def __init__(
        self, message: str, *, pipeline: str, step: str, pipeline_run_id: str, executed: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.pipeline = pipeline
        self.step = step
        self.pipeline_run_id = pipeline_run_id
        self.executed = executed  # the steps this call ran before the failure


@dataclass(frozen=True)
class StepResult:
    """One step of a pipeline run as recorded: succeeded (ran), cached (reused), failed or running."""

    step: str
    status: str
    cache_key: str
    outputs: dict[str, StoredOutput]
    cached_from: str | None
    started_at: datetime
    ended_at: datetime | None
    error: str | None


@dataclass(frozen=True)
class PipelineRun:
    """A recorded pipeline run; `output(name)` reads any step output back from the artifact store."""

    id: str
    pipeline: str
    status: str
    run_id: str | None
    params: dict[str, Any]
    steps: dict[str, StepResult]
    started_at: datetime
    ended_at: datetime | None
    error: str | None
    executed: tuple[str, ...] = ()  # steps this call ran (the others were cached or kept from before)
    artifacts: ArtifactStore | None = field(default=None, repr=False, compare=False)

    @property
    def statuses(self) -> dict[str, str]:
        return {name: result.status for name, result in self.steps.items()}

    def stored(self, name: str) -> StoredOutput:
        for result in self.steps.values():
            if name in result.outputs:
                return result.outputs[name]
        known = sorted(o for r in self.steps.values() for o in r.outputs)
        raise NotFoundError(f"Pipeline run {self.id} has no output '{name}'; its outputs are {known}.")

    def output(self, name: str) -> Any:
        if self.artifacts is None:
            raise ValidationError(
                f"Pipeline run {self.id} was read without an artifact store; use "
                "get_pipeline_run(metadata, run_id, artifacts=...) to read its outputs."
            )
        return load_output(self.artifacts, self.stored(name))


@dataclass(frozen=True)
class StepContext:
    """What code inside a running step can reach: its pipeline run and the tracked run metrics go to."""

    pipeline: str
    pipeline_run_id: str
    run_id: str
    step: str
    tracker: Tracker
    code: dict[str, Any]
    progress: Progress | None  # the pipeline's live display, for progress of work inside the step


_current: ContextVar[StepContext | None] = ContextVar("loopml_current_step", default=None)


def current_step() -> StepContext | None:
    """The step running in this context, or None outside a pipeline run."""
    return _current.get()


def log_metrics(metrics: Mapping[str, float], step: int = 0) -> None:
    """Log metrics to the running pipeline's tracked run, from inside a step."""
    context = _current.get()
    if context is None:
        raise ValidationError(
            "log_metric(s) was called outside a running pipeline step; call it from a @step function run by "
            "run_pipeline, or use Tracker.log_metrics(run_id, ...) directly."
        )
    context.tracker.log_metrics(context.run_id, dict(metrics), step=step)


def log_metric(key: str, value: float, step: int = 0) -> None:
    """Log one metric to the running pipeline's tracked run, from inside a step."""
    log_metrics({key: value}, step=step)


def run_pipeline(
    pipeline: Pipeline,
    *,
    metadata: MetadataStore,
    artifacts: ArtifactStore,
    code_dir: Path,
    params: Mapping[str, Any] | None = None,
    resume: str | None = None,
    context: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> PipelineRun:
    """Run `pipeline` (or resume the failed run `resume`) and return the recorded run.

    `params` override the pipeline's defaults (see `steps.layered_params` for loopml.yaml and the CLI);
    `context` gives resources by parameter name (e.g. `project`), never hashed. A failing step raises
    StepFailedError naming the step and the run id to resume.
    """
    resources = dict(context or {})
    _check_resources(pipeline, resources)
    runner = _Runner(pipeline, metadata, artifacts, code_dir, resources, progress)
    if resume is None:
        runner.start(params)
    else:
        runner.reopen(resume, params)
    runner.run()
    return get_pipeline_run(metadata, runner.id, artifacts=artifacts, executed=tuple(runner.executed))


def get_pipeline_run(
    metadata: MetadataStore,
    pipeline_run_id: str,
    *,
    artifacts: ArtifactStore | None = None,
    executed: tuple[str, ...] = (),
) -> PipelineRun:
    with metadata.begin() as conn:
        row = conn.execute(select(pipeline_runs).where(pipeline_runs.c.id == pipeline_run_id)).first()
        if row is None:
            raise NotFoundError(
                f"No pipeline run '{pipeline_run_id}'; list them with list_pipeline_runs(metadata)."
            )
        steps = _step_results(conn, [pipeline_run_id])
    return _pipeline_run(row, steps.get(pipeline_run_id, {}), artifacts, executed)


def list_pipeline_runs(
    metadata: MetadataStore, pipeline: str | None = None, *, limit: int | None = None
) -> list[PipelineRun]:
    """Pipeline runs, newest first, optionally of one pipeline (read outputs via get_pipeline_run)."""
    query = select(pipeline_runs).order_by(pipeline_runs.c.started_at.desc(), pipeline_runs.c.id)
    if pipeline is not None:
        query = query.where(pipeline_runs.c.pipeline == pipeline)
    if limit is not None:
        query = query.limit(limit)
    with metadata.begin() as conn:
        rows = conn.execute(query).all()
        steps = _step_results(conn, [r.id for r in rows])
    return [_pipeline_run(r, steps.get(r.id, {}), None, ()) for r in rows]


def delete_pipeline_run(metadata: MetadataStore, artifacts: ArtifactStore, pipeline_run_id: str) -> list[str]:
    """Delete a pipeline run's records and the outputs no other owner uses; returns the deleted digests.

    Its tracked run is kept (a model version may point at it). Runs that reused its outputs from the cache
    hold references of their own, so their outputs stay.
    """
    with metadata.begin() as conn:
        row = conn.execute(select(pipeline_runs).where(pipeline_runs.c.id == pipeline_run_id)).first()
        if row is None:
            raise NotFoundError(f"No pipeline run '{pipeline_run_id}' to delete.")
        orphans = release(conn, _owner(pipeline_run_id))
        conn.execute(delete(step_runs).where(step_runs.c.pipeline_run_id == pipeline_run_id))
        conn.execute(delete(pipeline_runs).where(pipeline_runs.c.id == pipeline_run_id))
        metadata.record_event(
            conn,
            kind="pipeline_run.deleted",
            subject=f"pipeline_run:{pipeline_run_id}",
            reason=f"pipeline run of '{row.pipeline}' deleted",
            data={"pipeline": row.pipeline, "deleted_artifacts": orphans},
        )
    return delete_unreferenced(metadata, artifacts, orphans)


def environment_digest() -> str:
    """sha256 of the Python version and every installed package's version."""
    described = {"python": sys.version, "packages": installed_packages()}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def cache_key(
    step: Step, code: str, params: Mapping[str, Any], inputs: Mapping[str, str], environment: str
) -> str:
    """sha256 of what decides a step's outputs: name, code hash, parameters, input digests, output names and
    the installed packages (a library upgrade may change results, and pickled outputs may not load)."""
    payload = {
        "step": step.name,
        "code": code,
        "params": dict(params),
        "inputs": dict(inputs),
        "environment": environment,
    }
    payload["outputs"] = list(step.outputs)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class _Runner:
    """One invocation of run_pipeline: the run's ids, parameters and outputs so far."""

    def __init__(
        self,
        pipeline: Pipeline,
        metadata: MetadataStore,
        artifacts: ArtifactStore,
        code_dir: Path,
        resources: dict[str, Any],
        progress: bool,
    ) -> None:
        self.pipeline = pipeline
        self.metadata = metadata
        self.artifacts = artifacts
        self.code_dir = Path(code_dir)
        self.resources = resources
        self.environment = environment_digest()
        self.progress = progress
        self.tracker = Tracker(metadata)
        self.code: dict[str, Any] = {}
        self.id = ""
        self.run_id = ""
        self.params: dict[str, Any] = {}
        self.previous: dict[str, StepResult] = {}
        self.outputs: dict[str, StoredOutput] = {}
        self.executed: list[str] = []
        self.finished = False

    def start(self, overrides: Mapping[str, Any] | None) -> None:
        self.params = self.pipeline.resolve_params(overrides)
        self.code = code_version(self.code_dir)
        self.run_id = self.tracker.start_run(self.pipeline.name, self.params, self.code)
        self.id = str(uuid.uuid4())
        with self.metadata.begin() as conn:
            conn.execute(
                insert(pipeline_runs).values(
                    id=self.id,
                    pipeline=self.pipeline.name,
                    status=RUNNING,
                    params=self.params,
                    run_id=self.run_id,
                    started_at=self.metadata.clock.now(),
                )
            )
            self._event(conn, "started", f"pipeline '{self.pipeline.name}' started")

    def reopen(self, pipeline_run_id: str, overrides: Mapping[str, Any] | None) -> None:
        """Take a failed (or interrupted) run up again with its own parameters and id."""
        with self.metadata.begin() as conn:
            row = conn.execute(select(pipeline_runs).where(pipeline_runs.c.id == pipeline_run_id)).first()
            if row is None:
                raise NotFoundError(
                    f"No pipeline run '{pipeline_run_id}' to resume; list runs with list_pipeline_runs()."
                )
            if row.pipeline != self.pipeline.name:
                raise ValidationError(
                    f"Pipeline run {pipeline_run_id} belongs to pipeline '{row.pipeline}', not "
                    f"'{self.pipeline.name}'; resume it with its own pipeline."
                )
            if row.status == SUCCEEDED:
                raise ValidationError(
                    f"Pipeline run {pipeline_run_id} of '{row.pipeline}' succeeded; there is nothing to resume. "
                    "Run the pipeline again instead: unchanged steps come from the cache."
                )
            self.params = self.pipeline.resolve_params(row.params)
            if overrides and self.pipeline.resolve_params({**self.params, **overrides}) != self.params:
                raise ValidationError(
                    f"Resuming pipeline run {pipeline_run_id} reuses its parameters {row.params}; drop the "
                    f"overrides {dict(overrides)} or start a new run with them."
                )
            self.id, self.run_id = row.id, row.run_id
            self.previous = _step_results(conn, [row.id]).get(row.id, {})
            conn.execute(
                update(pipeline_runs)
                .where(pipeline_runs.c.id == self.id)
                .values(status=RUNNING, ended_at=None, error=None)
            )
            self._event(conn, "resumed", f"pipeline run resumed after: {row.error or row.status}")
        self.code = code_version(self.code_dir)

    def run(self) -> None:
        try:
            with _StepProgress(self.progress, [s.name for s in self.pipeline.steps]) as shown:
                for s in self.pipeline.steps:
                    self._step(s, shown)
        except BaseException as exc:
            self._finish(FAILED, f"{type(exc).__name__}: {exc}")
            raise
        self._finish(SUCCEEDED, None)

    def _step(self, s: Step, shown: _StepProgress) -> None:
        inputs = {name: self.outputs[name].digest for name in s.inputs if self.pipeline.producer(name)}
        params = {name: self.params[name] for name in self.pipeline.params_of(s)}
        key = cache_key(s, code_hash(s.func, self.code_dir), params, inputs, self.environment)
        kept = self.previous.get(s.name)
        if (
            kept
            and kept.status in (SUCCEEDED, CACHED)
            and kept.cache_key == key
            and self._present(kept.outputs)
        ):
            self.outputs.update(kept.outputs)
            shown.update(s.name, "kept from the failed attempt")
            return
        caches = s.cache if s.cache is not None else not any(name in self.resources for name in s.inputs)
        found = self._cached(key) if caches else None
        if found is not None:
            source, outputs = found
            now = self.metadata.clock.now()
            self._record(s, key, CACHED, outputs, now, now, cached_from=source)
            self.outputs.update(outputs)
            shown.update(s.name, f"cached (from run {source[:8]})")
            return
        shown.update(s.name, "running", running=True)
        self.outputs.update(self._execute(s, key, shown.progress))
        self.executed.append(s.name)
        shown.update(s.name, "done")

    def _execute(self, s: Step, key: str, progress: Progress | None) -> dict[str, StoredOutput]:
        started = self.metadata.clock.now()
        self._record(s, key, RUNNING, {}, started, None)
        context = StepContext(
            self.pipeline.name, self.id, self.run_id, s.name, self.tracker, self.code, progress
        )
        token = _current.set(context)
        try:
            kwargs = {name: self._argument(name) for name in s.inputs}
            produced = s.split(s.func(**kwargs))
            stored = {name: save_output(self.artifacts, value) for name, value in produced.items()}
        except BaseException as exc:
            self._fail(s, key, started, exc)
            if not isinstance(exc, Exception):
                raise
            raise StepFailedError(
                f"Step '{s.name}' of pipeline '{self.pipeline.name}' failed: {type(exc).__name__}: {exc}. "
                f"Pipeline run {self.id} is marked failed; fix the cause and resume it with "
                f"`loopml train {self.pipeline.name} --resume {self.id}` (or run_pipeline(..., "
                f"resume='{self.id}')): steps that succeeded are kept.",
                pipeline=self.pipeline.name,
                step=s.name,
                pipeline_run_id=self.id,
                executed=tuple(self.executed),
            ) from exc
        finally:
            _current.reset(token)
        self._record(s, key, SUCCEEDED, stored, started, self.metadata.clock.now())
        return stored

    def _argument(self, name: str) -> Any:
        if self.pipeline.producer(name) is not None:
            return load_output(self.artifacts, self.outputs[name])
        if name in self.pipeline.resources:
            return self.resources[name]
        return self.params[name]

    def _cached(self, key: str) -> tuple[str, dict[str, StoredOutput]] | None:
        """The newest reusable run of this key (producers first) whose outputs are all still stored."""
        query = (
            select(step_runs.c.pipeline_run_id, step_runs.c.outputs)
            .where(step_runs.c.cache_key == key, step_runs.c.status.in_([SUCCEEDED, CACHED]))
            .order_by(case((step_runs.c.status == SUCCEEDED, 0), else_=1), step_runs.c.ended_at.desc())
            .limit(10)
        )
        with self.metadata.begin() as conn:
            rows = conn.execute(query).all()
        for source, recorded in rows:
            outputs = {name: StoredOutput.from_record(r) for name, r in recorded.items()}
            if self._present(outputs):
                return source, outputs
        return None

    def _present(self, outputs: Mapping[str, StoredOutput]) -> bool:
        return all(self.artifacts.exists(o.digest) for o in outputs.values())

    def _record(
        self,
        s: Step,
        key: str,
        status: str,
        outputs: Mapping[str, StoredOutput],
        started: datetime,
        ended: datetime | None,
        *,
        cached_from: str | None = None,
    ) -> None:
        """Write the step's row (and, with outputs, this run's references to them) in one transaction."""
        values = {
            "cache_key": key,
            "status": status,
            "outputs": {name: o.record() for name, o in outputs.items()},
            "cached_from": cached_from,
            "started_at": started,
            "ended_at": ended,
            "error": None,
        }
        orphans: list[str] = []
        with self.metadata.begin() as conn:
            changed = conn.execute(
                update(step_runs)
                .where(step_runs.c.pipeline_run_id == self.id, step_runs.c.step == s.name)
                .values(**values)
            ).rowcount
            if not changed:
                conn.execute(insert(step_runs).values(pipeline_run_id=self.id, step=s.name, **values))
            if outputs:
                orphans = _replace_refs(conn, self.id, s.name, outputs, self.metadata.clock.now())
        for digest in orphans:  # outputs of an earlier attempt of this step that nothing uses any more
            self.artifacts.delete(digest)

    def _fail(self, s: Step, key: str, started: datetime, exc: BaseException) -> None:
        detail = "".join(traceback.format_exception(exc)).strip()
        with self.metadata.begin() as conn:
            conn.execute(
                update(step_runs)
                .where(step_runs.c.pipeline_run_id == self.id, step_runs.c.step == s.name)
                .values(status=FAILED, ended_at=self.metadata.clock.now(), error=detail)
            )
        self._finish(FAILED, f"step '{s.name}' failed: {type(exc).__name__}: {exc}")

    def _finish(self, status: str, error: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        with self.metadata.begin() as conn:
            conn.execute(
                update(pipeline_runs)
                .where(pipeline_runs.c.id == self.id)
                .values(status=status, ended_at=self.metadata.clock.now(), error=error)
            )
            self._event(conn, status, error or f"pipeline '{self.pipeline.name}' {status}")
        self.tracker.end_run(self.run_id, "finished" if status == SUCCEEDED else "failed", error)
        if error:
            logger.warning("pipeline run %s of '%s' failed: %s", self.id, self.pipeline.name, error)

    def _event(self, conn: Connection, what: str, reason: str) -> None:
        self.metadata.record_event(
            conn,
            kind=f"pipeline_run.{what}",
            subject=f"pipeline_run:{self.id}",
            reason=reason,
            data={"pipeline": self.pipeline.name, "run_id": self.run_id, "params": self.params},
        )


def _check_resources(pipeline: Pipeline, resources: Mapping[str, Any]) -> None:
    for s in pipeline.steps:
        for name in s.inputs:
            if name in pipeline.resources and name not in resources and pipeline.producer(name) is None:
                raise ValidationError(
                    f"Step '{s.name}' of pipeline '{pipeline.name}' takes '{name}', a resource the runner "
                    f"injects; pass context={{'{name}': ...}} to run_pipeline (Project.run_pipeline passes "
                    "the project)."
                )


def _owner(pipeline_run_id: str) -> str:
    return f"pipeline_run:{pipeline_run_id}"


def _replace_refs(
    conn: Connection, pipeline_run_id: str, step: str, outputs: Mapping[str, StoredOutput], now: datetime
) -> list[str]:
    """Point this run's '{step}/{output}' references at `outputs`; return digests that became unused."""
    owner = _owner(pipeline_run_id)
    mine = (artifact_refs.c.owner == owner) & artifact_refs.c.path.startswith(f"{step}/", autoescape=True)
    old = set(conn.execute(select(artifact_refs.c.digest).where(mine)).scalars())
    conn.execute(delete(artifact_refs).where(mine))
    add_refs(
        conn, owner, {f"{step}/{name}": StoredFile(o.digest, o.size) for name, o in outputs.items()}, now
    )
    if not old:
        return []
    used = set(conn.execute(select(artifact_refs.c.digest).where(artifact_refs.c.digest.in_(old))).scalars())
    return sorted(old - used)


def _step_results(conn: Connection, ids: list[str]) -> dict[str, dict[str, StepResult]]:
    found: dict[str, dict[str, StepResult]] = {i: {} for i in ids}
    if not ids:
        return found
    rows = conn.execute(
        select(step_runs)
        .where(step_runs.c.pipeline_run_id.in_(ids))
        .order_by(step_runs.c.started_at, step_runs.c.step)
    ).all()
    for r in rows:
        found[r.pipeline_run_id][r.step] = StepResult(
            step=r.step,
            status=r.status,
            cache_key=r.cache_key,
            outputs={name: StoredOutput.from_record(o) for name, o in r.outputs.items()},
            cached_from=r.cached_from,
            started_at=r.started_at,
            ended_at=r.ended_at,
            error=r.error,
        )
    return found


def _pipeline_run(
    row: Any, steps: dict[str, StepResult], artifacts: ArtifactStore | None, executed: tuple[str, ...]
) -> PipelineRun:
    return PipelineRun(
        id=row.id,
        pipeline=row.pipeline,
        status=row.status,
        run_id=row.run_id,
        params=row.params,
        steps=steps,
        started_at=row.started_at,
        ended_at=row.ended_at,
        error=row.error,
        executed=executed,
        artifacts=artifacts,
    )


class _StepProgress:
    """One rich line per step (waiting, cached, running, done) when asked for; nothing otherwise."""

    def __init__(self, enabled: bool, steps: list[str]) -> None:
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        if enabled:
            self.progress = Progress(
                SpinnerColumn(finished_text="[green]✓[/]"),
                TextColumn("{task.fields[step]:<24}"),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
            )
            for name in steps:
                self.tasks[name] = self.progress.add_task("waiting", total=1, step=name, start=False)

    def __enter__(self) -> _StepProgress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, step: str, status: str, *, running: bool = False) -> None:
        if self.progress is None:
            return
        task = self.tasks[step]
        self.progress.start_task(task)  # a task never started never counts as finished
        self.progress.update(task, description=status, completed=0 if running else 1)
