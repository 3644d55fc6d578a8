"""Storing DataFrameSources at apply time, so the server and the CLI read the same frame the notebook applied.

A frame is written once as Parquet under `feature_sources/<sha256>.parquet` in the offline store, atomically
(temporary name, then rename); the applied view records that path (relative to the project directory when
the offline store is inside it), the file's sha256 and its row count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from loopml.features.definitions import FeatureView
from loopml.features.registry import Definition
from loopml.features.sources import DataFrameSource, file_sha256
from loopml.storage.offline import OfflineStore


def store_frames(
    objects: Iterable[Definition], offline: OfflineStore, project_dir: Path, *, write: bool = True
) -> list[Definition]:
    """`objects` with each feature view's in-memory DataFrameSource replaced by its stored file.

    With `write=False` nothing is written (to plan an apply); the paths and checksums are the same.
    """
    stored: list[Definition] = []
    for obj in objects:
        if (
            isinstance(obj, FeatureView)
            and isinstance(obj.source, DataFrameSource)
            and obj.source.frame is not None
        ):
            source = _store(obj.source, offline, project_dir, write)
            # An aggregation view derives its schema; passing it back would declare it twice.
            obj = replace(obj, source=source, schema=() if obj.aggregations else obj.schema)
        stored.append(obj)
    return stored


def _store(source: DataFrameSource, offline: OfflineStore, project_dir: Path, write: bool) -> DataFrameSource:
    relative = f"feature_sources/{source.sha256}.parquet"
    path = offline.dataset_dir(relative)
    if write and not _holds(path, source.sha256):
        offline.write_file(relative, source.data)
    try:
        recorded = path.resolve().relative_to(project_dir.resolve()).as_posix()
    except ValueError:  # the offline store lives outside the project
        recorded = path.resolve().as_posix()
    return DataFrameSource(
        None,
        source.timestamp_field,
        source.created_timestamp_field,
        path=recorded,
        sha256=source.sha256,
        rows=source.rows,
    )


def _holds(path: Path, sha256: str) -> bool:
    """Whether `path` already holds the file (content-addressed: the same name means the same bytes)."""
    return path.exists() and file_sha256(path) == sha256
