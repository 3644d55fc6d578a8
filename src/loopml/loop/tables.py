"""Tables owned by the loop package: policies with their state, so the controller keeps none in memory."""

from sqlalchemy import Column, String, Table

from loopml.storage.metadata import METADATA
from loopml.storage.types import JSONText, UTCDateTime

policies = Table(
    "policies",
    METADATA,
    Column("name", String(200), primary_key=True),
    Column("kind", String(50), nullable=False),
    Column("spec", JSONText, nullable=False),
    Column("state", JSONText, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
