"""loopml.yaml: the one place configuration comes from, with environment overrides.

Any key can be overridden by an environment variable named `LOOPML_` followed by the key path in upper case,
with `__` between levels: `LOOPML_METADATA__URL=postgresql+psycopg://...` replaces `metadata.url`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from loopml.errors import ConfigError

CONFIG_FILE = "loopml.yaml"
ENV_PREFIX = "LOOPML_"

DEFAULTS: dict[str, Any] = {
    "project": "loopml",
    "metadata": {"url": "sqlite:///.loopml/metadata.db"},
    "artifacts": {"url": ".loopml/artifacts"},
    # DuckDB spills to the temp directory past the memory limit instead of growing to most of the RAM.
    "offline": {
        "root": ".loopml/offline",
        "duckdb_memory_limit": "3GB",
        "duckdb_temp_directory": ".loopml/duckdb-tmp",
    },
    "online": {"url": "sqlite:///.loopml/online.db"},
    "serving": {"host": "127.0.0.1", "port": 8700, "log_batch_size": 500, "log_flush_seconds": 1.0},
}


def default_config(project_name: str) -> dict[str, Any]:
    """The embedded defaults for a new project."""
    config = copy.deepcopy(DEFAULTS)
    config["project"] = project_name
    return config


def write_config(directory: Path, project_name: str, *, overwrite: bool = False) -> Path:
    """Write a loopml.yaml with embedded defaults; refuse to overwrite unless asked."""
    path = directory / CONFIG_FILE
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass overwrite=True (or --force) to replace it.")
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(default_config(project_name), sort_keys=False))
    return path


def load_config(directory: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read loopml.yaml from `directory`, fill in defaults and apply environment overrides."""
    path = directory / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"No {CONFIG_FILE} in {directory}; run `loopml init` there first.")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, found {type(loaded).__name__}.")
    config = _merge(copy.deepcopy(DEFAULTS), loaded)
    _apply_environment(config, os.environ if environ is None else environ)
    return config


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _apply_environment(config: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"Environment variable {name} has an empty key part; use LOOPML_SECTION__KEY.")
        target = config
        for part in path[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name} sets a key under '{part}', which is a value, not a section.")
            target = child
        target[path[-1]] = yaml.safe_load(raw) if raw else raw
