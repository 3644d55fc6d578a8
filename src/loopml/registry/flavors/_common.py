"""Helpers every flavor shares: reading its files, checking its config, handing a model its columns."""

from __future__ import annotations

import functools
import importlib.metadata
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import ValidationError

_DEFAULT_NAME = re.compile(r"^(Column_|f)\d+$")  # names LightGBM and XGBoost give unnamed features


def read(files: Mapping[str, bytes], path: str, flavor: str) -> bytes:
    """The bytes of one of the model's files, or an error that names the file the flavor needs."""
    try:
        return files[path]
    except KeyError:
        raise ValidationError(
            f"The {flavor} flavor needs the file {path!r}, which is not among the model's files "
            f"({sorted(files)[:10]}); the model version is incomplete: re-register it."
        ) from None


def config_problems(
    config: Any, required: Mapping[str, type | tuple[type, ...]], optional: Mapping[str, Any] | None = None
) -> list[str]:
    """What is wrong with a flavor's config, one 'key problem' phrase per issue (the caller adds the path)."""
    if not isinstance(config, Mapping):
        return [f" must be a mapping of settings, got {config!r}"]
    problems = []
    for key, kind in required.items():
        if key not in config:
            problems.append(f".{key} is missing")
        elif not isinstance(config[key], kind):
            problems.append(f".{key} must be {_kind_name(kind)}, got {config[key]!r}")
    for key, kind in (optional or {}).items():
        if config.get(key) is not None and not isinstance(config[key], kind):
            problems.append(f".{key} must be {_kind_name(kind)}, got {config[key]!r}")
    return problems


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", list: "a list", dict: "a mapping", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def select(frame: Any, names: Sequence[str]) -> Any:
    """The frame's columns in the model's order; anything that is not a DataFrame passes through."""
    if not isinstance(frame, pd.DataFrame) or not names or list(frame.columns) == list(names):
        return frame  # already in order (the serving path builds it so): no copy per request
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise ValidationError(
            f"The input lacks the model's columns {missing}; send all of {list(names)} "
            f"(it has {list(frame.columns)[:20]})."
        )
    return frame[list(names)]


def input_names(trained: Sequence[str] | None, signature: Sequence[str]) -> list[str]:
    """The names a booster was trained with, unless they are the library's placeholders; else the signature's."""
    if trained and not all(_DEFAULT_NAME.match(name) for name in trained):
        return list(trained)
    return list(signature)


def jsonable(values: Any) -> list[Any]:
    """Class labels as plain JSON values (numpy scalars become Python ones)."""
    return [value.item() if isinstance(value, np.generic) else value for value in np.asarray(values).tolist()]


@functools.cache
def distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def library_versions(modules: set[str]) -> dict[str, str]:
    """Installed distribution versions of the given top-level modules (unknown modules are skipped)."""
    versions = {}
    for module in sorted(modules):
        for dist in distributions().get(module, []):
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions
