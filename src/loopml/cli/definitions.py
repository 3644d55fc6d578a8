"""Loading the Python files of a project and collecting the loopml objects they define."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Any

from loopml.errors import ValidationError

PROJECT_FILE_MARK = "__loopml_project_file__"


def collect(directory: Path, kinds: tuple[type, ...], files: list[Path] | None = None) -> list[Any]:
    """Every instance of `kinds` defined at module level in the project's .py files (or the given files),
    directly or in a module-level list or tuple (`DEFINITIONS = [user, profile]`).

    Each file is imported once as a module named after it (so functions defined there, such as on-demand
    views, can be imported again by serving), with the project directory importable.
    """
    paths = files or sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))
    found: dict[int, Any] = {}
    sys.path.insert(0, str(directory.resolve()))
    try:
        for path in paths:
            shadowed = _module_elsewhere(path)
            if shadowed is not None:
                raise ValidationError(
                    f"{path} has the name of the module '{path.stem}' ({shadowed}); importing it as "
                    f"'{path.stem}' would replace that module in this process. Rename the file."
                )
            try:
                namespace = vars(_import_file(path))
            except Exception as exc:
                raise ValidationError(
                    f"Loading definitions from {path} failed: {type(exc).__name__}: {exc}"
                ) from exc
            for value in namespace.values():
                for item in value if isinstance(value, list | tuple) else (value,):
                    if isinstance(item, kinds):
                        found[id(item)] = item
    finally:
        sys.path.remove(str(directory.resolve()))
    return list(found.values())


def _import_file(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ValidationError(f"{path} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    setattr(module, PROJECT_FILE_MARK, True)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[path.stem]
        raise
    return module


def _module_elsewhere(path: Path) -> str | None:
    """Where a module named like `path` lives outside its directory (built in, loaded or installed), if any."""
    name, here = path.stem, path.resolve()
    if name in sys.builtin_module_names:
        return "built in"
    loaded = sys.modules.get(name)
    if loaded is not None:
        if getattr(
            loaded, PROJECT_FILE_MARK, False
        ):  # a project file loaded before (maybe another project's)
            return None
        return getattr(loaded, "__file__", None) or "already loaded"
    elsewhere = [entry for entry in sys.path if Path(entry or ".").resolve() != here.parent]
    spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
    return None if spec is None else spec.origin or "a namespace package"
