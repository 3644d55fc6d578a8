"""Tables owned by the serving package."""

from sqlalchemy import Column, ForeignKey, String, Table

from loopml.storage.metadata import METADATA
from loopml.storage.types import UTCDateTime

endpoints = Table(
    "endpoints",
    METADATA,
    Column("name", String(200), primary_key=True),
    Column("model_name", String(200), ForeignKey("registered_models.name"), nullable=False),
    Column("alias", String(100), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
