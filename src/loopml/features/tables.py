"""Tables owned by the features package."""

from sqlalchemy import BigInteger, Boolean, Column, Integer, String, Table, Text

from loopml.storage.metadata import METADATA
from loopml.storage.types import JSONText, UTCDateTime

feature_definitions = Table(
    "feature_definitions",
    METADATA,
    Column("kind", String(50), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("spec", JSONText, nullable=False),
    Column("spec_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # Set on the newest version when `apply` deletes the definition; older versions stay readable.
    Column("deleted_at", UTCDateTime),
)

materialization_runs = Table(
    "materialization_runs",
    METADATA,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("view_name", String(200), nullable=False, index=True),
    Column("view_version", Integer, nullable=False),
    Column("incremental", Boolean, nullable=False),
    Column("range_start", UTCDateTime, nullable=False),
    Column("range_end", UTCDateTime, nullable=False),
    Column("rows_written", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("error", Text),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
)
