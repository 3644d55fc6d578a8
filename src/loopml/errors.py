"""One hierarchy for every error loopml raises on purpose.

Each message says what was wrong, with which value, and what to do about it.
"""

from __future__ import annotations


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
