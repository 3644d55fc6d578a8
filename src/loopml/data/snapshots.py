"""Dataset snapshots: a training set frozen as Parquet, named by the hash of its content.

The content hash covers the rows and schema (not the file bytes), so the same data always gets the same
hash; the file's own sha256 is kept too and checked on every load.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa
from sqlalchemy import insert, select

from loopml.data.tables import datasets
from loopml.errors import ArtifactCorruptedError, NotFoundError
from loopml.storage.metadata import MetadataStore
from loopml.storage.offline import OfflineStore


@dataclass(frozen=True)
class Snapshot:
    id: str
    name: str
    content_hash: str
    file_sha256: str
    path: str
    n_rows: int
    columns: dict[str, str]
    time_start: datetime | None
    time_end: datetime | None
    spec: dict[str, Any]
    created_at: datetime


def content_hash(df: pd.DataFrame) -> str:
    """sha256 of the frame's rows and schema as an Arrow IPC stream (index and pandas metadata ignored)."""
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def save_snapshot(
    metadata: MetadataStore,
    offline: OfflineStore,
    name: str,
    df: pd.DataFrame,
    *,
    timestamp_field: str | None = None,
    spec: dict[str, Any] | None = None,
) -> Snapshot:
    """Freeze `df` as a snapshot.

    The same content with the same spec returns the existing snapshot; the same content built from other
    definitions is a new snapshot (its lineage differs) sharing the file already written.
    """
    digest = content_hash(df)
    spec = spec or {}
    with metadata.begin() as conn:
        same_content = [
            Snapshot(**row._mapping)
            for row in conn.execute(
                select(datasets).where(datasets.c.name == name, datasets.c.content_hash == digest)
            )
        ]
    for existing in same_content:
        if existing.spec == spec:
            return existing
    relative = f"snapshots/{name}/{digest}.parquet"
    if same_content:
        file_sha = same_content[0].file_sha256
    else:
        path = offline.write_file(relative, df)
        file_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    times = pd.to_datetime(df[timestamp_field], utc=True) if timestamp_field and len(df) else None
    snapshot = Snapshot(
        id=str(uuid.uuid4()),
        name=name,
        content_hash=digest,
        file_sha256=file_sha,
        path=relative,
        n_rows=len(df),
        columns={str(c): str(t) for c, t in df.dtypes.items()},
        time_start=None if times is None else times.min().to_pydatetime(),
        time_end=None if times is None else times.max().to_pydatetime(),
        spec=spec,
        created_at=metadata.clock.now(),
    )
    with metadata.begin() as conn:
        conn.execute(insert(datasets).values(**snapshot.__dict__))
        metadata.record_event(
            conn,
            kind="dataset.snapshotted",
            subject=f"dataset:{snapshot.id}",
            reason=f"saved snapshot '{name}' of {len(df)} rows",
            data={"content_hash": digest},
        )
    return snapshot


def get_snapshot(metadata: MetadataStore, snapshot_id: str) -> Snapshot:
    with metadata.begin() as conn:
        row = conn.execute(select(datasets).where(datasets.c.id == snapshot_id)).first()
    if row is None:
        raise NotFoundError(f"No dataset snapshot with id '{snapshot_id}'.")
    return Snapshot(**row._mapping)


def list_snapshots(metadata: MetadataStore, name: str | None = None) -> list[Snapshot]:
    """Every snapshot (of one name, if given), newest first."""
    query = select(datasets).order_by(datasets.c.created_at.desc())
    if name is not None:
        query = query.where(datasets.c.name == name)
    with metadata.begin() as conn:
        return [Snapshot(**row._mapping) for row in conn.execute(query)]


def load_snapshot(metadata: MetadataStore, offline: OfflineStore, snapshot_id: str) -> pd.DataFrame:
    """Read a snapshot back after checking its file against the recorded sha256."""
    snapshot = get_snapshot(metadata, snapshot_id)
    path = offline.dataset_dir(snapshot.path)
    if not path.exists():
        raise NotFoundError(f"Snapshot '{snapshot_id}' file {path} is missing from the offline store.")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != snapshot.file_sha256:
        raise ArtifactCorruptedError(
            f"Snapshot '{snapshot_id}' file {path} hashes to {actual}, not the recorded {snapshot.file_sha256}; "
            "it was modified after it was saved. Rebuild the training set instead of using it."
        )
    return pd.read_parquet(pa.BufferReader(data))
