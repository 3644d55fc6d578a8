"""Tables owned by the data package."""

from sqlalchemy import BigInteger, Column, String, Table

from loopml.storage.metadata import METADATA
from loopml.storage.types import JSONText, UTCDateTime

datasets = Table(
    "datasets",
    METADATA,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False, index=True),
    Column("content_hash", String(64), nullable=False, index=True),
    Column("file_sha256", String(64), nullable=False),
    Column("path", String(500), nullable=False),
    Column("n_rows", BigInteger, nullable=False),
    Column("columns", JSONText, nullable=False),
    Column("time_start", UTCDateTime),
    Column("time_end", UTCDateTime),
    Column("spec", JSONText, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
