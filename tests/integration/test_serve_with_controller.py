"""`loopml serve --with-controller` runs the controller beside the server and stops it with the server."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from loopml.loop.lock import ControllerLock
from tests.helpers import live_toy_project


def test_the_server_brings_its_controller_and_takes_it_away(tmp_path: Path) -> None:
    project, clock = live_toy_project(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "loopml",
        "serve",
        "--with-controller",
        "--controller-interval",
        "0.2s",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--clock-file",
        str(clock.path),
        "-p",
        str(tmp_path),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = ControllerLock(project.metadata)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "loopml serve exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never got ready"
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while lock.acquire():  # until the controller child holds it
            lock.release()
            assert time.monotonic() < deadline, "no controller took the lock"
            time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)
    deadline = time.monotonic() + 30
    while not lock.acquire():  # the controller stopped with the server
        assert time.monotonic() < deadline, "the controller outlived its server"
        time.sleep(0.1)
    lock.release()
    project.close()
