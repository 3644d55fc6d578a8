"""What a run ran on, captured without asking: code version, interpreter, platform and installed packages.

A model that cannot be rebuilt is a liability; the commit (and whether the tree had uncommitted changes),
the Python version and every installed distribution's version are what a rebuild needs. Data snapshots used
are added by the tracker when the run names them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

GIT_TIMEOUT_SECONDS = 5


def code_version(directory: Path) -> dict[str, Any]:
    """The git commit (and whether the tree was dirty) of `directory`, or what is known without git."""
    import loopml

    version: dict[str, Any] = {"loopml": loopml.__version__, "git_commit": None, "git_dirty": None}
    git = git_state(directory)
    if git is not None:
        version.update(git_commit=git["commit"], git_dirty=git["dirty"])
    return version


def git_state(directory: Path) -> dict[str, Any] | None:
    """Commit, dirty flag and branch of the git work tree holding `directory`; None outside git."""
    try:
        commit = _git(directory, "rev-parse", "HEAD")
        status = _git(directory, "status", "--porcelain")
        branch = _git(directory, "rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.strip(), "dirty": bool(status.strip()), "branch": branch.strip()}


def _git(directory: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_SECONDS,
        check=True,
    ).stdout


@functools.cache
def installed_packages() -> dict[str, str]:
    """Every installed distribution's name (normalised, lower case) and version, read once per process."""
    packages: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            packages[name.lower().replace("_", "-")] = distribution.version
    return dict(sorted(packages.items()))


def capture_environment(code_dir: Path | None = None, code: dict[str, Any] | None = None) -> dict[str, Any]:
    """The environment of this process for a run: interpreter, platform, packages and git state.

    The git state comes from `code_dir` when given, else from the `code` version the caller already took (no
    commit there: the code is not in git), else from the current directory.
    """
    if code_dir is not None:
        git = git_state(code_dir)
    elif code is not None:
        has_commit = code.get("git_commit") is not None
        git = (
            {"commit": code["git_commit"], "dirty": code.get("git_dirty"), "branch": None}
            if has_commit
            else None
        )
    else:
        git = git_state(Path.cwd())
    return {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
        },
        "git": git,
        "packages": installed_packages(),
        "datasets": [],
    }
