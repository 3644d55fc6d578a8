"""Which owner (a model version, a run, a pipeline step) uses which artifact, under which file name.

Artifacts are content-addressed, so two owners may share a blob. An owner's rows are its manifest (path →
digest); releasing an owner returns the digests nobody else references, which the caller may then delete
from the ArtifactStore once its transaction has committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Column, Connection, String, Table, delete, insert, select

from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import METADATA, MetadataStore
from loopml.storage.types import UTCDateTime

artifact_refs = Table(
    "artifact_refs",
    METADATA,
    Column("owner", String(300), primary_key=True),
    Column("path", String(500), primary_key=True),
    Column("digest", String(64), nullable=False, index=True),
    Column("size", BigInteger),  # NULL for files recorded before sizes were (upgraded databases)
    Column("created_at", UTCDateTime, nullable=False),
)


@dataclass(frozen=True)
class StoredFile:
    """One file of an owner's manifest: its content's sha256 and size in bytes (None if not recorded)."""

    digest: str
    size: int | None


def add_refs(conn: Connection, owner: str, files: Mapping[str, StoredFile], now: datetime) -> None:
    """Record that `owner` uses these files (path → stored file)."""
    if files:
        conn.execute(
            insert(artifact_refs),
            [
                {"owner": owner, "path": path, "digest": f.digest, "size": f.size, "created_at": now}
                for path, f in files.items()
            ],
        )


def refs_of(conn: Connection, owner: str) -> dict[str, StoredFile]:
    """The manifest of `owner`, path → stored file, in path order."""
    rows = conn.execute(
        select(artifact_refs.c.path, artifact_refs.c.digest, artifact_refs.c.size)
        .where(artifact_refs.c.owner == owner)
        .order_by(artifact_refs.c.path)
    ).all()
    return {path: StoredFile(digest, size) for path, digest, size in rows}


def release(conn: Connection, owner: str) -> list[str]:
    """Forget `owner`'s files; return the digests no other owner references any more."""
    digests = {f.digest for f in refs_of(conn, owner).values()}
    conn.execute(delete(artifact_refs).where(artifact_refs.c.owner == owner))
    if not digests:
        return []
    still_used = set(
        conn.execute(select(artifact_refs.c.digest).where(artifact_refs.c.digest.in_(digests))).scalars()
    )
    return sorted(digests - still_used)


def delete_unreferenced(
    metadata: MetadataStore, artifacts: ArtifactStore, digests: Iterable[str]
) -> list[str]:
    """After the releasing transaction committed: delete the blobs among `digests` no owner references now.

    References are read again first, so a blob another owner took up meanwhile stays. A crash before the
    deletes leaves an unreferenced blob, never an owner without its files.
    """
    candidates = set(digests)
    if not candidates:
        return []
    with metadata.begin() as conn:
        used = set(
            conn.execute(
                select(artifact_refs.c.digest).where(artifact_refs.c.digest.in_(candidates))
            ).scalars()
        )
    unused = sorted(candidates - used)
    for digest in unused:
        artifacts.delete(digest)
    return unused
