"""Tables owned by the training package: runs with their params and metrics."""

from sqlalchemy import Column, Float, ForeignKey, Integer, String, Table, Text

from loopml.storage.metadata import METADATA
from loopml.storage.types import JSONText, UTCDateTime

runs = Table(
    "runs",
    METADATA,
    Column("id", String(36), primary_key=True),
    Column("pipeline", String(200), nullable=False, index=True),
    Column("status", String(20), nullable=False),
    Column("code_version", JSONText, nullable=False),
    Column("dataset_id", String(36), ForeignKey("datasets.id")),
    Column("started_at", UTCDateTime, nullable=False, index=True),
    Column("ended_at", UTCDateTime),
    Column("error", Text),
)

run_params = Table(
    "run_params",
    METADATA,
    Column("run_id", String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
)

run_metrics = Table(
    "run_metrics",
    METADATA,
    Column("run_id", String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("value", Float, nullable=False),
    Column("ts", UTCDateTime, nullable=False),
)
