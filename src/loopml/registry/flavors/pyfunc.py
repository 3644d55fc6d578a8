"""Custom Python models: the class's source and named artifact files, never a pickle of the instance.

A loopml PythonModel is rebuilt by importing its class from the saved source and calling load_context with
the artifacts; an MLflow-style model (`loader_module` + `data` + `code`) by calling its module's
`_load_pyfunc(data_path)`, so models written by mlflow.pyfunc.save_model(loader_module=...) load without
MLflow. Files are materialised in a private temporary directory that lives as long as the loaded model.
"""

from __future__ import annotations

import atexit
import importlib
import platform
import re
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from loopml.errors import ValidationError
from loopml.registry.flavors._common import config_problems

NAME = "pyfunc"
CODE_DIR = "code"
ARTIFACTS_DIR = "artifacts"
_IMPORT_LOCK = threading.Lock()
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class PythonModel:
    """Base class of custom models: state comes from artifact files in load_context, not from pickling.

    Subclasses must be constructible without arguments and defined in an importable module file (not in
    __main__ or a notebook), because loading imports the class from its saved source.
    """

    def load_context(self, artifacts: dict[str, Path]) -> None:
        """Read the model's state from its artifacts (name -> local path of the file or directory)."""

    def predict(self, frame: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement predict(frame).")


def matches(model: Any) -> bool:
    return isinstance(model, PythonModel)


def save(
    model: PythonModel,
    *,
    artifacts: Mapping[str, Path | str] | None = None,
    code_paths: Sequence[Path | str] = (),
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The class's module source (with its parent packages' __init__ files), extra code and artifacts."""
    cls = type(model)
    files = _module_files(cls.__module__)
    for extra in map(Path, code_paths):
        files.update(_tree(extra, f"{CODE_DIR}/{extra.name}"))
    stored: dict[str, str] = {}
    for name, source in (artifacts or {}).items():
        source = Path(source)
        if not _ARTIFACT_NAME.match(name):
            raise ValidationError(
                f"Artifact name {name!r} is not allowed; use letters, digits, '_', '-' and '.'."
            )
        if not source.exists():
            raise ValidationError(f"Artifact {name!r} points at {source}, which does not exist.")
        stored[name] = f"{ARTIFACTS_DIR}/{name}" + ("" if source.is_dir() else f"/{source.name}")
        files.update(_tree(source, stored[name]))
    config = {
        "python_model": f"{cls.__module__}:{cls.__qualname__}",
        "code": CODE_DIR,
        "artifacts": stored,
        "python_version": platform.python_version(),
    }
    return files, config


def load(files: Mapping[str, bytes], config: Mapping[str, Any], **_: Any) -> Any:
    root = Path(tempfile.mkdtemp(prefix="loopml-pyfunc-"))
    try:
        for path, data in files.items():
            target = (root / path).resolve()
            if not target.is_relative_to(root.resolve()):
                raise ValidationError(f"The model file path {path!r} points outside the model; refusing it.")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        model = _python_model(root, config) if "python_model" in config else _loader_model(root, config)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        weakref.finalize(model, shutil.rmtree, root, ignore_errors=True)
    except TypeError:  # an instance that cannot be weakly referenced keeps its files until the process exits
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    return model


def _python_model(root: Path, config: Mapping[str, Any]) -> PythonModel:
    module_name, _, qualname = config["python_model"].partition(":")
    module = import_isolated(root / config.get("code", CODE_DIR), module_name)
    cls: Any = module
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
    if not isinstance(cls, type):
        raise ValidationError(
            f"flavors.pyfunc.python_model {config['python_model']!r} names no class in the code."
        )
    model = cls()
    model.load_context({name: root / path for name, path in (config.get("artifacts") or {}).items()})
    return model


def _loader_model(root: Path, config: Mapping[str, Any]) -> LoaderModel:
    code = config.get("code")
    if code:
        module = import_isolated(root / code, config["loader_module"])
    else:
        module = _import(config["loader_module"])
    if not hasattr(module, "_load_pyfunc"):
        raise ValidationError(
            f"The loader module {config['loader_module']!r} has no _load_pyfunc(data_path)."
        )
    data = config.get("data")
    implementation = module._load_pyfunc(str(root / data) if data else str(root))
    if hasattr(implementation, "predict_proba"):
        return LoaderClassifier(implementation)
    return LoaderModel(implementation)


class LoaderModel:
    """What an MLflow-style loader module returned, behind predict(frame)."""

    def __init__(self, implementation: Any) -> None:
        self.implementation = implementation

    def predict(self, frame: Any) -> Any:
        return self.implementation.predict(frame)


class LoaderClassifier(LoaderModel):
    def predict_proba(self, frame: Any) -> np.ndarray:
        return np.asarray(self.implementation.predict_proba(frame))


def import_isolated(code_dir: Path, module_name: str) -> ModuleType:
    """Import a module from saved code without leaving it in, or letting it clash with, sys.modules.

    Modules already imported under the saved code's top-level names are set aside during the import and put
    back afterwards; the saved modules are then dropped from sys.modules (their classes and functions keep
    working: they hold their globals). Imports the saved code performs lazily, at call time, are therefore not
    supported: import at module level.
    """
    roots = (
        {p.stem if p.suffix == ".py" else p.name for p in code_dir.iterdir()} if code_dir.is_dir() else set()
    )
    with _IMPORT_LOCK:
        aside = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] in roots}
        for name in aside:
            del sys.modules[name]
        sys.path.insert(0, str(code_dir))
        importlib.invalidate_caches()
        try:
            return _import(module_name)
        finally:
            sys.path.remove(str(code_dir))
            for name in [n for n in sys.modules if n.split(".")[0] in roots]:
                del sys.modules[name]
            sys.modules.update(aside)


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ValidationError(
            f"Cannot import the model's module {module_name!r}: {exc}. Save the model again with the "
            "modules it needs in code_paths, or install the package that provides them."
        ) from exc


def _module_files(module_name: str) -> dict[str, bytes]:
    """The module's source file at its dotted path under code/, with its parent packages' __init__ files."""
    if module_name == "__main__":
        raise ValidationError(
            "The PythonModel class is defined in __main__ (a script or notebook); move it to a module file so "
            "loading can import it."
        )
    files = {}
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        module = sys.modules.get(name)
        source = getattr(module, "__file__", None)
        if source is None:  # a namespace package has no file of its own
            continue
        source_path = Path(source)
        relative = "/".join(parts[:depth]) + ("/__init__.py" if source_path.name == "__init__.py" else ".py")
        files[f"{CODE_DIR}/{relative}"] = source_path.read_bytes()
    return files


def _tree(source: Path, target: str) -> dict[str, bytes]:
    """A file stored as `target`, or a directory's files stored under it (bytecode caches left out)."""
    if source.is_file():
        return {target: source.read_bytes()}
    if not source.is_dir():
        raise ValidationError(f"Code path {source} does not exist.")
    return {
        f"{target}/{path.relative_to(source).as_posix()}": path.read_bytes()
        for path in sorted(source.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def requirements(config: Mapping[str, Any]) -> list[str]:
    return []


def check_config(config: Any) -> list[str]:
    problems = config_problems(
        config, {}, {"python_model": str, "loader_module": str, "code": str, "data": str, "artifacts": dict}
    )
    if not problems and not (config.get("python_model") or config.get("loader_module")):
        problems.append(".python_model is missing (or, for an MLflow-style model, .loader_module)")
    return problems
