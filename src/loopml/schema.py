"""Every table of every domain package, registered on the shared MetaData (migration checks, tooling)."""

from __future__ import annotations

from sqlalchemy import MetaData

from loopml.storage.metadata import METADATA


def register_all_tables() -> MetaData:
    """Import each package's tables so METADATA knows them all; returns METADATA."""
    from loopml.data import tables as _data  # noqa: F401
    from loopml.delivery import tables as _delivery  # noqa: F401
    from loopml.features import tables as _features  # noqa: F401
    from loopml.loop import tables as _loop  # noqa: F401
    from loopml.monitoring import tables as _monitoring  # noqa: F401
    from loopml.registry import tables as _registry  # noqa: F401
    from loopml.serving import tables as _serving  # noqa: F401
    from loopml.storage import artifact_refs as _artifact_refs  # noqa: F401
    from loopml.training import tables as _training  # noqa: F401

    return METADATA
