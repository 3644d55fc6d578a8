"""Shadow routes scored in a child process at idle priority, so mirrored traffic never slows the primary.

A serving process hands each mirrored request (endpoint, route, the version its table routed to, the request's
columns, unit id and time) to a bounded queue and answers at once. A child process that only scores shadows
reads the queue, loads only the versions shadow routes use, scores each request as of its time and logs the
output (`served` false) through its own log writers. The child runs under `SCHED_IDLE`: the kernel gives it a
core only when no serving thread wants one, so a shadow route uses capacity the primary leaves unused. When
the queue is full (the machine has no spare capacity) mirrored requests are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml.errors import LoopmlError

if TYPE_CHECKING:
    from loopml.project import Project
    from loopml.serving.router import LoadedModel, Router
    from loopml.serving.routing import RoutedTo
    from loopml.serving.service import Columns, PredictionService

logger = logging.getLogger(__name__)

MAX_QUEUE = 10_000  # mirrored requests waiting for spare capacity; past that they are dropped and counted
FLUSH_TIMEOUT_SECONDS = 120.0  # a flush waits this long for the child (it may be starting: imports, models)
STOP_SECONDS = 60.0  # at shutdown the child scores what is queued and flushes its log within this
POLL_SECONDS = 0.5  # with an empty queue the child reads route changes and checks its parent this often
_IDLE = object()  # routes are re-read only then (or for a version not loaded yet), so what was queued for a
# route just removed is still scored with its model


@dataclass(frozen=True)
class Mirrored:
    """One request for one shadow route, as the primary's process received it."""

    endpoint: str
    route: str
    model_name: str
    version: int
    columns: Columns
    rows: int
    unit_id: str | None
    at: datetime
    prediction_ids: tuple[
        str, ...
    ] = ()  # the answer's, one per row: a shadow prediction names what it mirrors


@dataclass(frozen=True)
class _Flush:
    token: int


@dataclass(frozen=True)
class _Unloaded:
    names: frozenset[str]


class ShadowProcess:
    """The serving process's side: a bounded queue to a child that scores shadow routes."""

    def __init__(self, project_dir: Path, *, max_queue: int = MAX_QUEUE) -> None:
        self.project_dir = Path(project_dir)
        self._context = multiprocessing.get_context("spawn")
        self._inbox: Any = self._context.Queue(max_queue)
        self._acks: Any = self._context.Queue()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._flushes = 0
        self._submitted = False  # anything queued since construction (then a flush or close needs the child)
        self._unloaded: frozenset[str] = frozenset()
        self._starting = threading.Lock()  # the refresh thread and a flush may both find the child gone
        self._flushing = threading.Lock()  # one flush at a time waits for its own token

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def submit(self, request: Mirrored) -> bool:
        """Queue a mirrored request without waiting; False when the queue is full (it is dropped)."""
        try:
            self._inbox.put_nowait(request)
        except queue.Full:
            return False
        self._submitted = True
        return True

    def ensure_running(self) -> None:
        """Start the child, or start it again if it died (what it had queued stays in the queue)."""
        with self._starting:
            self._start()

    def _start(self) -> None:
        if self.running:
            return
        if self._process is not None:
            logger.warning("The shadow process exited with %s; starting it again", self._process.exitcode)
        self._process = self._context.Process(
            target=_main,
            args=(str(self.project_dir), self._inbox, self._acks, os.getpid()),
            name="loopml-shadows",
            daemon=True,
        )
        self._process.start()
        if self._unloaded:
            self._inbox.put(_Unloaded(self._unloaded))

    def set_unloaded(self, names: Iterable[str]) -> None:
        """Tell the child which endpoints the repository API unloaded (it frees their shadow models)."""
        names = frozenset(names)
        if names != self._unloaded:
            self._unloaded = names
            if self.running:
                self._inbox.put(_Unloaded(names))

    def flush(self) -> None:
        """Block until everything queued so far is scored and written to the log."""
        if not self._submitted:
            return
        self.ensure_running()
        with self._flushing:
            self._flushes += 1
            self._await_flush(self._flushes)

    def _await_flush(self, token: int) -> None:
        self._inbox.put(_Flush(token))
        deadline = time.monotonic() + FLUSH_TIMEOUT_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.running:
                raise LoopmlError(
                    "The shadow process did not flush its predictions "
                    f"({'it exited' if not self.running else f'within {FLUSH_TIMEOUT_SECONDS:.0f} s'}); "
                    "see the server log."
                )
            try:
                if self._acks.get(timeout=min(remaining, POLL_SECONDS)) == token:
                    return
            except queue.Empty:
                continue

    def close(self) -> None:
        """Score and log what is queued, then stop the child."""
        if self._submitted:
            self.ensure_running()
        if self._process is None:
            return
        if self.running:
            self._inbox.put(None)
            self._process.join(STOP_SECONDS)
        if self._process.is_alive():
            logger.warning("The shadow process did not stop within %.0f s; terminating it", STOP_SECONDS)
            self._process.terminate()
            self._process.join(5)
        self._inbox.close()
        self._acks.close()


def _main(project_dir: str, inbox: Any, acks: Any, parent: int) -> None:
    """The child: score mirrored requests until told to stop or the parent is gone."""
    _lower_priority()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the parent, which stops this process
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s shadow %(name)s: %(message)s")
    from loopml.project import Project

    project = Project(Path(project_dir))
    try:
        asyncio.run(_score_forever(project, inbox, acks, parent))
    finally:
        project.close()


def _lower_priority() -> None:
    """Idle scheduling where the kernel has it (Linux), else the lowest nice value."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)


async def _score_forever(project: Project, inbox: Any, acks: Any, parent: int) -> None:
    from loopml.serving.app import limit_model_threads, log_writers
    from loopml.serving.endpoints import SHADOW
    from loopml.serving.metrics import Metrics
    from loopml.serving.router import Router
    from loopml.serving.service import PredictionService
    from loopml.serving.unloaded import UnloadedEndpoints

    unloaded = UnloadedEndpoints()
    router = Router(project.metadata, project.registry, project.path, unloaded, modes=frozenset({SHADOW}))
    metrics = Metrics()
    writers = log_writers(project, metrics)
    service = PredictionService(project, router, metrics, writers)
    loop = asyncio.get_running_loop()
    try:
        router.refresh(force=True)
        limit_model_threads(int(project.config["serving"].get("model_threads", 1)))
        while True:
            message = await loop.run_in_executor(None, _next, inbox, parent)
            if message is None:
                break
            if message is _IDLE:
                router.refresh()
            elif isinstance(message, Mirrored):
                await _score(service, router, message)
            elif isinstance(message, _Flush):
                for writer in writers.values():
                    await asyncio.to_thread(writer.flush)
                acks.put(message.token)
            elif isinstance(message, _Unloaded):
                unloaded.replace(message.names)
                router.refresh(force=True)
    finally:
        await service.close()
        for writer in writers.values():
            try:
                writer.close()
            except LoopmlError:
                logger.exception("Closing the %s writer failed", writer.dataset)
        await project.online.aclose()
        metrics.close()


def _next(inbox: Any, parent: int) -> object:
    """The next message; `_IDLE` after a quiet poll interval; None (stop) once the parent has exited."""
    try:
        return inbox.get(timeout=POLL_SECONDS)
    except queue.Empty:
        return None if os.getppid() != parent else _IDLE


async def _score(service: PredictionService, router: Router, request: Mirrored) -> None:
    """Score one mirrored request with the version its route had in the parent (reloading routes once if
    this process has not caught up); a request for a route that changed meanwhile is skipped."""
    for attempt in range(2):
        routed = _route(router, request)
        if routed is not None:
            await service.score_shadow(router.served(request.endpoint), routed, request)
            return
        if attempt == 0:
            router.refresh(force=True)
    logger.info(
        "Skipped a mirrored request: endpoint %s route %s no longer serves %s/%d",
        request.endpoint,
        request.route,
        request.model_name,
        request.version,
    )


def _route(router: Router, request: Mirrored) -> RoutedTo[LoadedModel] | None:
    served = router.endpoints.get(request.endpoint)
    if served is None:
        return None
    for routed in served.table.routes:
        model = routed.served
        if (
            routed.route.name == request.route
            and model is not None
            and (model.version.model_name, model.version.version) == (request.model_name, request.version)
        ):
            return routed
    return None
