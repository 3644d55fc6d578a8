"""Tables owned by the registry package."""

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from loopml.storage.metadata import METADATA
from loopml.storage.types import JSONText, UTCDateTime

registered_models = Table(
    "registered_models",
    METADATA,
    Column("name", String(200), primary_key=True),
    Column("description", Text, nullable=False, default=""),
    Column("training_spec", JSONText, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

model_versions = Table(
    "model_versions",
    METADATA,
    Column("model_name", String(200), ForeignKey("registered_models.name"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("run_id", String(36), ForeignKey("runs.id")),
    Column("dataset_id", String(36), ForeignKey("datasets.id")),
    Column("artifact_digest", String(64), nullable=False),
    Column("flavor", String(50), nullable=False),
    Column("inputs", JSONText, nullable=False),
    Column("features", JSONText, nullable=False),
    Column("feature_service", String(200)),
    Column("code_version", JSONText, nullable=False),
    Column("library_versions", JSONText, nullable=False),
    Column("metrics", JSONText, nullable=False),
    Column("model_file", JSONText),
    Column("gate", JSONText),
    Column("created_at", UTCDateTime, nullable=False),
)

model_aliases = Table(
    "model_aliases",
    METADATA,
    Column("model_name", String(200), primary_key=True),
    Column("alias", String(100), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    ForeignKeyConstraint(["model_name", "version"], ["model_versions.model_name", "model_versions.version"]),
)

# Every period an alias pointed at a version: [valid_from, valid_to), valid_to NULL while it still does.
alias_history = Table(
    "alias_history",
    METADATA,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("model_name", String(200), nullable=False),
    Column("alias", String(100), nullable=False),
    Column("version", Integer, nullable=False),
    Column("valid_from", UTCDateTime, nullable=False),
    Column("valid_to", UTCDateTime),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_alias_history_lookup", "model_name", "alias", "valid_from"),
)

registered_model_tags = Table(
    "registered_model_tags",
    METADATA,
    Column("model_name", String(200), ForeignKey("registered_models.name"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
)

model_version_tags = Table(
    "model_version_tags",
    METADATA,
    Column("model_name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
    ForeignKeyConstraint(
        ["model_name", "version"],
        ["model_versions.model_name", "model_versions.version"],
        ondelete="CASCADE",
    ),
)
