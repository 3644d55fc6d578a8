"""Loading the Python files of a project and collecting the loopml objects they define."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import TypeVar

from loopml.errors import ValidationError

T = TypeVar("T")


def collect(directory: Path, kind: type[T], files: list[Path] | None = None) -> list[T]:
    """Every instance of `kind` defined at module level in the project's .py files (or the given files)."""
    paths = files or sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))
    found: dict[int, T] = {}
    sys.path.insert(0, str(directory.resolve()))
    try:
        for path in paths:
            try:
                namespace = runpy.run_path(str(path))
            except Exception as exc:
                raise ValidationError(
                    f"Loading definitions from {path} failed: {type(exc).__name__}: {exc}"
                ) from exc
            for value in namespace.values():
                if isinstance(value, kind):
                    found[id(value)] = value
    finally:
        sys.path.remove(str(directory.resolve()))
    return list(found.values())
