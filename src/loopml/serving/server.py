"""Running the serving app: in the foreground (`loopml serve`), in a thread, or as a child process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import uvicorn
from fastapi import FastAPI

from loopml.serving.app import create_app
from loopml.serving.unloaded import UnloadedEndpoints

if TYPE_CHECKING:
    from loopml.project import Project

SWITCH_INTERVAL_SECONDS = 0.0005


def serve(project: Project, host: str, port: int, log_level: str = "info") -> None:
    """Serve until interrupted; the prediction log is flushed on shutdown."""
    uvicorn.run(serving_app(project), host=host, port=port, log_level=log_level, access_log=False)


def serving_app(project: Project, unloaded: UnloadedEndpoints | None = None) -> FastAPI:
    """The app of a process that only serves (`loopml serve`, or one of its workers).

    The log writers' threads run Python between requests; a request waiting for the GIL waits up to the
    switch interval (5 ms by default, 0.5 ms here: the online benchmark's p99 fell from 10.4 to 6.2 ms).
    """
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    return create_app(project, freeze_startup_heap=True, unloaded=unloaded)


class ServerProcess:
    """`loopml serve` as a child process on loopback, started and stopped by its owner (demo, tests)."""

    def __init__(
        self,
        project_dir: Path,
        *,
        clock_file: Path | None = None,
        log_path: Path | None = None,
        workers: int = 1,
        pin_workers: bool = False,
    ) -> None:
        self.project_dir = Path(project_dir)
        self.workers, self.pin_workers = workers, pin_workers
        self.clock_file = clock_file
        self.log_path = log_path or self.project_dir / "serve.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> str:
        command = [
            sys.executable,
            "-m",
            "loopml",
            "serve",
            "--project",
            str(self.project_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--pin-workers" if self.pin_workers else "--no-pin-workers",
        ]
        if self.clock_file is not None:
            command += ["--clock-file", str(self.clock_file)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"`loopml serve` exited with {self.process.returncode}; see {self.log_path}."
                )
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"`loopml serve` was not ready within {timeout} s; see {self.log_path}.")

    def stop(self, timeout: float = 30.0, sig: signal.Signals = signal.SIGINT) -> None:
        """Ask for a graceful shutdown (the prediction log is flushed), then wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
