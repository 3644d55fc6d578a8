"""Tables owned by the features package."""

from sqlalchemy import Column, Integer, String, Table

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
)
