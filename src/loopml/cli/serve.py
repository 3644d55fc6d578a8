"""`loopml serve`: one server process, or several worker processes listening on one port.

Python runs one request at a time per process; `--workers N` starts N processes (uvicorn's supervisor, which
restarts a worker that dies) so a server uses N cores. Each worker loads every endpoint's models and refreshes
its routes from the metadata store on its own, so a route change reaches all of them within the refresh
interval. What must be server-wide is shared through a state directory the supervisor makes: the repository
API's unloaded endpoints (serving/unloaded.py) and the Prometheus metrics (serving/metrics.py). Each worker
writes its own prediction log files and flushes them when it stops.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import typer
import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from loopml.cli.common import ProjectOption, open_project
from loopml.errors import ValidationError
from loopml.serving.metrics import MULTIPROCESS_DIRECTORY
from loopml.serving.server import serve as serve_one
from loopml.serving.server import serving_app
from loopml.serving.unloaded import UnloadedEndpoints

logger = logging.getLogger(__name__)

WORKER_SETTINGS = "LOOPML_SERVE_WORKER"  # JSON for the worker processes: project, clock file, state directory
MAX_WORKERS = 64
SUPERVISE_SECONDS = 0.5  # how often the supervisor looks for a worker that died
STOP_SECONDS = 60.0  # how long a stopping worker may take to finish its requests and flush its log


def serve(
    host: str | None = typer.Option(None, help="Interface to listen on (default from loopml.yaml)."),
    port: int | None = typer.Option(None, help="Port (default from loopml.yaml)."),
    workers: int | None = typer.Option(
        None, help="Server processes (default from loopml.yaml serving.workers, else 1); about one per core."
    ),
    pin_workers: bool | None = typer.Option(
        None,
        "--pin-workers/--no-pin-workers",
        help="Keep each worker on a core of its own (default from loopml.yaml serving.pin_workers, else off).",
    ),
    clock_file: Path | None = typer.Option(None, help="Read simulated time from this file (demo and tests)."),
    with_controller: bool = typer.Option(
        False, "--with-controller", help="Also run `loopml controller` beside the server (stopped with it)."
    ),
    controller_interval: str = typer.Option("60s", help="Time between the controller's ticks."),
    project_dir: Path = ProjectOption,
) -> None:
    """Serve every deployed endpoint over HTTP (loopml JSON under /v1, health under /v2, /metrics)."""
    project = open_project(project_dir, clock_file)
    settings = project.config["serving"]
    host = host or settings["host"]
    port = port or int(settings["port"])
    count = _worker_count(workers if workers is not None else settings.get("workers", 1))
    pin = bool(pin_workers if pin_workers is not None else settings.get("pin_workers", False))
    with _controller(project_dir, clock_file, controller_interval) if with_controller else nullcontext():
        if count == 1:
            serve_one(project, host, port, log_level="warning")
            return
        project.close()
        serve_workers(project_dir, clock_file, host, port, count, pin=pin)


@contextmanager
def _controller(project_dir: Path, clock_file: Path | None, interval: str) -> Iterator[None]:
    """`loopml controller` as a child for as long as the server runs (its lock keeps it the only one acting)."""
    command = [sys.executable, "-m", "loopml", "controller", "--interval", interval, "-p", str(project_dir)]
    if clock_file is not None:
        command += ["--clock-file", str(clock_file)]
    process = subprocess.Popen(command, start_new_session=True)  # a Ctrl-C reaches the server, which stops it
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_workers(
    project_dir: Path, clock_file: Path | None, host: str, port: int, workers: int, *, pin: bool = False
) -> None:
    """Run `workers` worker processes until SIGINT or SIGTERM; each flushes its log when it stops.

    Each worker has a listening socket of its own on the same port (SO_REUSEPORT): the kernel spreads new
    connections evenly over the workers that listen. One shared socket would not: the first worker to wake
    accepts a whole burst of connections, and keep-alive clients stay where they landed (23 of 32 on one
    worker of two, measured). The sockets are bound here and listen once their worker has loaded every model,
    so connections go to ready workers only; a worker that dies is started again on its socket.

    With `pin`, worker k runs on the k-th CPU this process may use (modulo their number). Unpinned, the kernel
    sometimes runs both workers of a two-core machine on one core for a few milliseconds: at 2,000 req/s the
    p99 was 6.6-10.2 ms unpinned and 4.2-5.7 ms pinned (benchmarks/serving.py).
    """
    _refuse_taken_port(host, port)
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="loopml-serve-") as state:
        metrics = Path(state) / "metrics"
        metrics.mkdir()
        settings = {
            "project": str(project_dir.resolve()),
            "clock_file": str(clock_file.resolve()) if clock_file else None,
            "state": state,
        }
        # Set before the workers start, so that they import prometheus_client with it.
        environment = {MULTIPROCESS_DIRECTORY: str(metrics), WORKER_SETTINGS: json.dumps(settings)}
        with _environment(environment):
            sockets = [_bound_socket(host, port) for _ in range(workers)]
            Supervisor(sockets, [cpus[k % len(cpus)] for k in range(workers)] if pin else None).run()


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (the worker processes inherit them), then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Supervisor:
    """Starts a worker process per socket (on its CPU, if given), restarts one that dies, and stops them all on
    SIGINT or SIGTERM."""

    def __init__(self, sockets: list[socket.socket], cpus: list[int] | None = None) -> None:
        self.sockets = sockets
        self.cpus = cpus
        self.context = multiprocessing.get_context("spawn")
        self.stopping = threading.Event()

    def run(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        processes = [self._start(index) for index in range(len(self.sockets))]
        try:
            while not self.stopping.wait(SUPERVISE_SECONDS):
                for index, process in enumerate(processes):
                    if process.is_alive():
                        continue
                    if process.exitcode == STARTUP_FAILURE:
                        logger.error("A worker failed to start (see above); stopping the server.")
                        self.stopping.set()
                        break
                    logger.warning(
                        "Worker %s exited with %s; starting another", process.pid, process.exitcode
                    )
                    processes[index] = self._start(index)
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()  # SIGTERM: the worker finishes its requests and flushes its log
            for process in processes:
                process.join(STOP_SECONDS)
                if process.is_alive():
                    logger.error("Worker %s did not stop within %s s; killing it", process.pid, STOP_SECONDS)
                    process.kill()
                    process.join()
            for sock in self.sockets:
                sock.close()

    def _start(self, index: int) -> multiprocessing.process.BaseProcess:
        cpu = self.cpus[index] if self.cpus else None
        process = self.context.Process(
            target=_run_worker, args=(self.sockets[index], cpu), name=f"loopml-serve-worker-{index}"
        )
        process.start()
        return process


def _run_worker(sock: socket.socket, cpu: int | None) -> None:
    """A worker process: uvicorn on its own socket, with the app `worker_app` builds.

    The worker leaves the terminal's process group: a Ctrl-C reaches the supervisor alone, which then sends one
    SIGTERM. A second signal would make uvicorn skip the app's shutdown, where the prediction log is flushed.
    """
    os.setpgrp()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # the threads it starts (log writers) inherit it
    config = uvicorn.Config(
        "loopml.cli.serve:worker_app", factory=True, log_level="warning", access_log=False, workers=1
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except Exception:
        if server.started:
            raise
        logger.exception("A worker failed before it could serve")
        sys.exit(STARTUP_FAILURE)  # the supervisor stops instead of restarting it in a loop


def _refuse_taken_port(host: str, port: int) -> None:
    """Fail clearly when something listens on host:port already, even another server sharing it by
    SO_REUSEPORT (the workers' own sockets would join that one's group silently)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValidationError(
                f"Cannot listen on {host}:{port} ({exc.strerror}); choose another --port or stop what uses it."
            ) from None


def _bound_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port that shares the port with its siblings; it listens once its worker starts."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn calls this in each worker, with WORKER_SETTINGS set)."""
    settings = json.loads(os.environ[WORKER_SETTINGS])
    clock_file = Path(settings["clock_file"]) if settings["clock_file"] else None
    project = open_project(Path(settings["project"]), clock_file)
    unloaded = UnloadedEndpoints(Path(settings["state"]))
    return serving_app(project, unloaded)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _worker_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ValidationError(
            f"serving workers must be a whole number from 1 to {MAX_WORKERS}, got {value!r}; "
            "use about one per core (`--workers 2` on a two-core machine)."
        )
    return value
