"""Tables owned by the training package: runs (params, metrics, tags) and pipeline runs with their steps."""

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Index, Integer, String, Table, Text

from loopml.storage.metadata import METADATA
from loopml.storage.types import JSONText, UTCDateTime

runs = Table(
    "runs",
    METADATA,
    Column("id", String(36), primary_key=True),
    Column("pipeline", String(200), nullable=False, index=True),
    Column("name", String(200)),
    Column("parent_run_id", String(36), ForeignKey("runs.id"), index=True),
    Column("status", String(20), nullable=False, index=True),
    Column("code_version", JSONText, nullable=False),
    Column("environment", JSONText),
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
    Index("ix_run_params_key_value", "key", "value"),
)

# Every logged value (a history per key); several values may share a step.
run_metrics = Table(
    "run_metrics",
    METADATA,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("run_id", String(36), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(250), nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("ts", UTCDateTime, nullable=False),
    Index("ix_run_metrics_run_key_step", "run_id", "key", "step"),
)

# The value with the highest step (latest time among equals) per run and key: what searches filter and sort on.
run_latest_metrics = Table(
    "run_latest_metrics",
    METADATA,
    Column("run_id", String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Float, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("ts", UTCDateTime, nullable=False),
    Index("ix_run_latest_metrics_key_value", "key", "value"),
)

run_tags = Table(
    "run_tags",
    METADATA,
    Column("run_id", String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
    Index("ix_run_tags_key_value", "key", "value"),
)

pipeline_runs = Table(
    "pipeline_runs",
    METADATA,
    Column("id", String(36), primary_key=True),
    Column("pipeline", String(200), nullable=False, index=True),
    Column("status", String(20), nullable=False),
    Column("params", JSONText, nullable=False),
    Column("run_id", String(36), ForeignKey("runs.id")),
    Column("started_at", UTCDateTime, nullable=False, index=True),
    Column("ended_at", UTCDateTime),
    Column("error", Text),
)

step_runs = Table(
    "step_runs",
    METADATA,
    Column(
        "pipeline_run_id", String(36), ForeignKey("pipeline_runs.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("step", String(200), primary_key=True),
    Column("cache_key", String(64), nullable=False, index=True),
    Column("status", String(20), nullable=False),
    Column("outputs", JSONText, nullable=False),
    Column("cached_from", String(36)),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Column("error", Text),
)
