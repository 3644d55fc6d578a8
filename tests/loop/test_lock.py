"""Two controllers never act at once: a file lock on SQLite, an advisory lock on PostgreSQL; a killed holder
frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from loopml.cli.main import app
from loopml.loop.lock import ControllerLock
from loopml.project import Project
from loopml.storage.metadata import MetadataStore


def test_one_controller_at_a_time_on_sqlite_and_postgres(metadata: MetadataStore) -> None:
    first, second = ControllerLock(metadata), ControllerLock(metadata)
    assert first.acquire() and first.acquire()  # taking it again is a no-op
    assert not second.acquire()
    first.release()
    assert second.acquire()
    assert not first.acquire()
    second.release()


def test_a_killed_controller_frees_the_lock(project: Project, tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from loopml.project import Project\n"
            "from loopml.loop.lock import ControllerLock\n"
            f"lock = ControllerLock(Project({str(project.path)!r}).metadata)\n"
            "assert lock.acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = ControllerLock(project.metadata)
        assert not lock.acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 5
        while not lock.acquire():
            assert time.monotonic() < deadline, "the lock outlived its killed holder"
            time.sleep(0.05)
        lock.release()
    finally:
        holder.kill()


def test_a_second_controller_stands_by(project: Project) -> None:
    with ControllerLock(project.metadata) as lock:
        assert lock.acquire()
        result = CliRunner().invoke(app, ["controller", "--once", "-p", str(project.path)])
    assert result.exit_code == 0, result.output
    assert "another controller is acting on this project; standing by" in result.output
    acting = CliRunner().invoke(app, ["controller", "--once", "-p", str(project.path)])
    assert acting.exit_code == 0 and "standing by" not in acting.output
