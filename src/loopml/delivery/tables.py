"""Tables owned by the delivery package: rollouts (declared spec, where each stands) and bandits."""

from sqlalchemy import Column, Integer, String, Table, Text

from loopml.storage.metadata import METADATA
from loopml.storage.types import JSONText, UTCDateTime

rollouts = Table(
    "rollouts",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("endpoint", String(200), nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("candidate_version", Integer, nullable=False),
    Column("baseline_version", Integer, nullable=False),
    Column("spec", JSONText, nullable=False),
    Column("state", String(20), nullable=False),
    Column("phase", String(20), nullable=False),
    Column("step", Integer, nullable=False),
    Column("step_started_at", UTCDateTime, nullable=False),
    Column("last_analysis_at", UTCDateTime),
    Column("last_verdict", String(20)),
    Column("reason", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

bandits = Table(
    "bandits",
    METADATA,
    Column("endpoint", String(200), primary_key=True),
    Column("spec", JSONText, nullable=False),
    Column("state", String(20), nullable=False),
    Column("arms", JSONText, nullable=False),  # per arm: version, pulls, rewards, weight as of the last tick
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
