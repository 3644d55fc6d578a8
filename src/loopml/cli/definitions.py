"""Loading the Python files of a project and collecting the loopml objects they define."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

from loopml.errors import ValidationError


def collect(directory: Path, kinds: tuple[type, ...], files: list[Path] | None = None) -> list[Any]:
    """Every instance of `kinds` defined at module level in the project's .py files (or the given files).

    Each file runs once, with the project directory importable.
    """
    paths = files or sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))
    found: dict[int, Any] = {}
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
                if isinstance(value, kinds):
                    found[id(value)] = value
    finally:
        sys.path.remove(str(directory.resolve()))
    return list(found.values())
