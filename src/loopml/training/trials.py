"""Parallel trials (a hyper-parameter search, say): one objective call per parameter set, in a process pool.

Each trial is a child run of the pipeline run it belongs to, recorded from the parent process (workers never
touch the metadata store), so a search of a hundred trials is a hundred runs under one parent.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import logging
import math
import multiprocessing
import numbers
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loopml.errors import ValidationError
from loopml.training.runner import current_step
from loopml.training.tracking import Tracker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialResult:
    """One trial: its parameters, and either its metrics or the error it failed with."""

    index: int
    params: dict[str, Any]
    metrics: dict[str, float] | None
    error: str | None
    run_id: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def grid(**values: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the given values, the last name varying fastest: grid(a=[1, 2], b=["x"])."""
    for name, options in values.items():
        if isinstance(options, str | bytes) or not isinstance(options, Sequence) or not options:
            raise ValidationError(
                f"grid({name}=...) needs a non-empty list of values, got {options!r}; write {name}=[{options!r}] "
                "for a single value."
            )
    names = list(values)
    return [dict(zip(names, combination, strict=True)) for combination in itertools.product(*values.values())]


def run_trials(
    objective: Callable[..., Mapping[str, float]],
    trials: Sequence[Mapping[str, Any]],
    *,
    processes: int | None = None,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    pipeline: str | None = None,
    code: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> list[TrialResult]:
    """Call `objective(**params)` for every trial in a pool of `processes` (default: one per CPU, at most one
    per trial) and return the results in trial order.

    `objective` must be a module-level function (workers import it by name; a project file works too)
    returning a dict of metric name → number. Inside a running pipeline step, each trial is recorded as a
    child run of the pipeline's tracked run with its params and metrics, and its progress is a line of the
    pipeline's display when that shows one; outside one, pass `tracker` (and `parent_run_id`) to record
    them, or nothing is recorded, and `progress=True` for a bar. `progress=False` shows nothing.
    A trial that raises, returns something other than numbers, or whose worker dies is recorded as failed
    with its error and returned with `error` set; the other trials carry on, and nothing is raised for it.
    Interrupting the search marks the unfinished trials' runs as killed.
    """
    trials = [_check_trial(i, t) for i, t in enumerate(trials)]
    reference = _ObjectiveRef.of(objective)
    step = current_step()
    if tracker is None and step is not None:
        tracker, parent_run_id = step.tracker, parent_run_id or step.run_id
        pipeline, code = pipeline or step.pipeline, code if code is not None else step.code
    shared = step.progress if step is not None and progress is not False else None
    if not trials:
        return []
    if processes is not None and processes < 1:
        raise ValidationError(f"run_trials needs processes >= 1 (or None for one per CPU), got {processes}.")
    workers = processes or min(len(trials), os.cpu_count() or 1)
    run_ids: list[str | None] = [
        tracker.start_run(
            pipeline or objective.__name__, params, code or {}, name=f"trial-{i}", parent_run_id=parent_run_id
        )
        if tracker is not None
        else None
        for i, params in enumerate(trials)
    ]
    results: dict[int, TrialResult] = {}
    try:
        with (
            ProcessPoolExecutor(max_workers=workers, mp_context=_start_method()) as pool,
            _bar(shared, bool(progress), len(trials)) as show,
        ):
            futures: dict[Future[Any], int] = {
                pool.submit(_call, reference, params): i for i, params in enumerate(trials)
            }
            for future in as_completed(futures):
                i = futures[future]
                results[i] = _record(tracker, i, trials[i], run_ids[i], future)
                show(len(results), sum(not r.ok for r in results.values()))
    except BaseException:
        if tracker is not None:
            for i, run_id in enumerate(run_ids):
                if i not in results and run_id is not None:
                    tracker.end_run(run_id, "killed", "the trial search was interrupted")
        raise
    return [results[i] for i in range(len(trials))]


def _start_method() -> multiprocessing.context.BaseContext:
    """Workers forked from a server that imported loopml once (fast after the first search, and safe with
    the parent's threads); spawned where there is no fork server (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])
    return context


def _check_trial(index: int, trial: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(trial, Mapping) or not all(isinstance(k, str) for k in trial):
        raise ValidationError(f"Trial {index} is {trial!r}; each trial is a dict of parameter name → value.")
    return dict(trial)


def _record(
    tracker: Tracker | None, index: int, params: dict[str, Any], run_id: str | None, future: Future[Any]
) -> TrialResult:
    """The trial's outcome, written to its run: metrics and finished, or failed with the error."""
    try:
        metrics = _metrics(future.result())
        if tracker is not None and run_id is not None:
            tracker.log_metrics(run_id, metrics)
    except Exception as exc:  # the trial's own failure, pickled back from its worker, or bad metrics
        error = f"{type(exc).__name__}: {exc}"
        logger.warning("trial %d %s failed: %s", index, params, error)
        if tracker is not None and run_id is not None:
            tracker.end_run(run_id, "failed", error)
        return TrialResult(index, params, None, error, run_id)
    if tracker is not None and run_id is not None:
        tracker.end_run(run_id, "finished")
    return TrialResult(index, params, metrics, None, run_id)


def _metrics(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"the objective returned {type(value).__name__}; return a dict of metric name → number."
        )
    metrics: dict[str, float] = {}
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, numbers.Real):
            raise ValidationError(f"metric {key!r} is {number!r}; metrics must be numbers.")
        metrics[str(key)] = float(number)
        if math.isnan(metrics[str(key)]):
            raise ValidationError(f"metric {key!r} is NaN; the trial did not produce a usable value.")
    return metrics


@dataclass(frozen=True)
class _ObjectiveRef:
    """An objective named by module and file, so a worker can import it even from a project file that
    was loaded under a name of its own (as `loopml train` loads them)."""

    module: str
    qualname: str
    file: str | None

    @classmethod
    def of(cls, objective: Callable[..., Any]) -> _ObjectiveRef:
        module, qualname = getattr(objective, "__module__", None), getattr(objective, "__qualname__", "")
        if module is None or not qualname or "<" in qualname or "." in qualname:
            raise ValidationError(
                f"run_trials needs a module-level function as objective (workers import it by name), got "
                f"{objective!r}; define it with `def` at the top level of a module."
            )
        loaded = sys.modules.get(module)
        file = getattr(loaded, "__file__", None) or getattr(
            getattr(objective, "__code__", None), "co_filename", None
        )
        return cls(module, qualname, file if file and not file.startswith("<") else None)

    def load(self) -> Callable[..., Any]:
        module = sys.modules.get(self.module)
        if module is None:
            if self.file:
                folder = str(Path(self.file).parent)
                if folder not in sys.path:
                    sys.path.insert(0, folder)  # the project's other modules, as the parent saw them
            try:
                module = importlib.import_module(self.module)
            except ModuleNotFoundError:
                if not self.file:
                    raise
                module = _import_file(self.module, self.file)
        return getattr(module, self.qualname)


def _import_file(name: str, file: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ValidationError(f"{file} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _call(reference: _ObjectiveRef, params: dict[str, Any]) -> Any:
    """What a worker runs: import the objective, call it."""
    return reference.load()(**params)


@contextmanager
def _bar(shared: Progress | None, enabled: bool, total: int) -> Iterator[Callable[[int, int], None]]:
    """A progress callback (done, failed): a line in the running pipeline's display, a bar of its own, or
    nothing."""

    def described(done: int, failed: int) -> str:
        return f"{done}/{total} trials" + (f", {failed} failed" if failed else "")

    if shared is not None:
        task = shared.add_task(described(0, 0), total=total, step="  trials")
        yield lambda done, failed: shared.update(task, completed=done, description=described(done, failed))
    elif enabled:
        columns = (TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"))
        with Progress(*columns, TimeElapsedColumn()) as progress:
            task = progress.add_task("", total=total)
            yield lambda done, failed: progress.update(
                task, completed=done, description=f"{failed} failed" if failed else ""
            )
    else:
        yield lambda done, failed: None
