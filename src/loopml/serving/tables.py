"""Tables owned by the serving package."""

from sqlalchemy import Column, Float, ForeignKey, Integer, String, Table

from loopml.storage.metadata import METADATA
from loopml.storage.types import JSONText, UTCDateTime

endpoints = Table(
    "endpoints",
    METADATA,
    Column("name", String(200), primary_key=True),
    Column("salt", String(200), nullable=False),
    Column("settings", JSONText, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

endpoint_routes = Table(
    "endpoint_routes",
    METADATA,
    Column("endpoint", String(200), ForeignKey("endpoints.name"), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("model_name", String(200), ForeignKey("registered_models.name"), nullable=False),
    Column("alias", String(100)),
    Column("version", Integer),
    Column("mode", String(20), nullable=False),
    Column("weight", Float, nullable=False),
)
