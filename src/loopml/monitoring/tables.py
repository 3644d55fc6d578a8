"""Tables owned by the monitoring package: the state of each alert, for de-duplication and `monitor status`."""

from sqlalchemy import Column, Integer, String, Table, Text

from loopml.storage.metadata import METADATA
from loopml.storage.types import JSONText, UTCDateTime

monitor_alerts = Table(
    "monitor_alerts",
    METADATA,
    Column("key", String(600), primary_key=True),
    Column("endpoint", String(200), nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("check_name", String(100), nullable=False),
    Column("feature", String(200), nullable=False),
    Column("severity", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSONText, nullable=False),
    Column("first_fired_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("notified_at", UTCDateTime),
    Column("notified_severity", String(20)),
    Column("resolved_at", UTCDateTime),
)
