"""One hierarchy for every error loopml raises on purpose.

Each message says what was wrong, with which value, and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class LoopmlError(Exception):
    """Base class of every error loopml raises deliberately."""


class ConfigError(LoopmlError):
    """loopml.yaml or an environment override is missing or invalid."""


class NotFoundError(LoopmlError):
    """A named object (model, version, endpoint, feature view, artifact...) does not exist."""


class ValidationError(LoopmlError):
    """Input that does not have the shape or values loopml needs."""


class ArtifactCorruptedError(LoopmlError):
    """A stored artifact no longer matches its sha256 checksum."""


class StoreUnavailableError(LoopmlError):
    """A configured backend (database, Redis, object storage) cannot be reached."""


class MaterializationError(LoopmlError):
    """Materialising one or more feature views failed; the others were written and every run is recorded."""


class NotReadyError(LoopmlError):
    """What a request needs is not being served right now (an unloaded endpoint, a full batch queue)."""


class BatchUnavailableError(NotReadyError):
    """The adaptive batcher could not score a request (overloaded or shut down): retry later; HTTP 503."""


class BatchTimeoutError(BatchUnavailableError):
    """A request waited in the batching queue longer than its endpoint's timeout."""


class BatcherClosedError(BatchUnavailableError):
    """The batcher was closed (server shutting down) before the request was scored."""


class BatchOutputError(LoopmlError):
    """A model returned a different number of rows than it was given (a model bug)."""


def shown(value: Any, width: int = 60) -> str:
    """A value as an error message quotes it: its repr, cut to `width` characters (requests may be hostile)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def listed(names: Iterable[Any], most: int = 10) -> str:
    """Names as an error message lists them: each quoted and cut, at most `most` of them."""
    names = list(names)
    more = f", ... {len(names) - most} more" if len(names) > most else ""
    return f"[{', '.join(shown(name) for name in names[:most])}{more}]"
