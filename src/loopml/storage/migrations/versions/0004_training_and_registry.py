"""Training and registry, deepened: run tags, metric history and latest values, run environments, pipeline
and step runs, artifact manifests, model files, alias history and tags.

Versions registered before this revision keep their single joblib artifact: they get a manifest naming it
`model.joblib` and a model file with the sklearn flavor. Alias periods are rebuilt from the alias events.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    _upgrade_runs()
    _upgrade_run_metrics()
    _create_run_tables()
    _create_pipeline_tables()
    _create_artifact_refs()
    _upgrade_model_versions()
    _create_registry_tables()
    _backfill_alias_history()


def _upgrade_runs() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("parent_run_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("environment", sa.Text(), nullable=True))
        batch.create_foreign_key("fk_runs_parent_run_id", "runs", ["parent_run_id"], ["id"])
        batch.create_index("ix_runs_parent_run_id", ["parent_run_id"], unique=False)
        batch.create_index("ix_runs_status", ["status"], unique=False)


def _upgrade_run_metrics() -> None:
    """Metric history without a (run, key, step) primary key: a step may be logged more than once."""
    op.create_table(
        "run_metrics_v4",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(
        "INSERT INTO run_metrics_v4 (run_id, key, step, value, ts) "
        "SELECT run_id, key, step, value, ts FROM run_metrics ORDER BY run_id, key, step"
    )
    op.drop_table("run_metrics")
    op.rename_table("run_metrics_v4", "run_metrics")
    op.create_index("ix_run_metrics_run_key_step", "run_metrics", ["run_id", "key", "step"], unique=False)


def _create_run_tables() -> None:
    op.create_index("ix_run_params_key_value", "run_params", ["key", "value"], unique=False)
    op.create_table(
        "run_latest_metrics",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "key"),
    )
    op.create_index("ix_run_latest_metrics_key_value", "run_latest_metrics", ["key", "value"], unique=False)
    op.execute(
        "INSERT INTO run_latest_metrics (run_id, key, value, step, ts) "
        "SELECT run_id, key, value, step, ts FROM ("
        "  SELECT run_id, key, value, step, ts, ROW_NUMBER() OVER ("
        "    PARTITION BY run_id, key ORDER BY step DESC, ts DESC, id DESC) AS rank"
        "  FROM run_metrics) AS ranked "
        "WHERE rank = 1"
    )
    op.create_table(
        "run_tags",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "key"),
    )
    op.create_index("ix_run_tags_key_value", "run_tags", ["key", "value"], unique=False)


def _create_pipeline_tables() -> None:
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("pipeline", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_pipeline_runs_pipeline", "pipeline_runs", ["pipeline"], unique=False)
    op.create_index("ix_pipeline_runs_started_at", "pipeline_runs", ["started_at"], unique=False)
    op.create_table(
        "step_runs",
        sa.Column("pipeline_run_id", sa.String(length=36), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("cache_key", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("outputs", sa.Text(), nullable=False),
        sa.Column("cached_from", sa.String(length=36), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["pipeline_run_id"], ["pipeline_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pipeline_run_id", "step"),
    )
    op.create_index("ix_step_runs_cache_key", "step_runs", ["cache_key"], unique=False)


def _create_artifact_refs() -> None:
    op.create_table(
        "artifact_refs",
        sa.Column("owner", sa.String(length=300), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "path"),
    )
    op.create_index("ix_artifact_refs_digest", "artifact_refs", ["digest"], unique=False)


def _upgrade_model_versions() -> None:
    op.add_column("model_versions", sa.Column("feature_service", sa.String(length=200), nullable=True))
    op.add_column("model_versions", sa.Column("model_file", sa.Text(), nullable=True))
    conn = op.get_bind()
    versions = sa.table(
        "model_versions",
        sa.column("model_name"),
        sa.column("version"),
        sa.column("artifact_digest"),
        sa.column("inputs"),
        sa.column("features"),
        sa.column("library_versions"),
        sa.column("created_at"),
        sa.column("model_file"),
    )
    refs = sa.table(
        "artifact_refs",
        sa.column("owner"),
        sa.column("path"),
        sa.column("digest"),
        sa.column("size"),
        sa.column("created_at"),
    )
    for row in conn.execute(sa.select(versions)).all():
        model_file = _legacy_model_file(row)
        conn.execute(
            sa.update(versions)
            .where(versions.c.model_name == row.model_name, versions.c.version == row.version)
            .values(model_file=orjson.dumps(model_file, option=orjson.OPT_SORT_KEYS).decode())
        )
        conn.execute(
            sa.insert(refs).values(
                owner=f"model:{row.model_name}/{row.version}",
                path="model.joblib",
                digest=row.artifact_digest,
                size=None,
                created_at=row.created_at,
            )
        )


def _legacy_model_file(row: Any) -> dict[str, Any]:
    """The model file of a version stored before model files existed: a joblib sklearn estimator."""
    libraries = orjson.loads(row.library_versions)
    inputs = orjson.loads(row.inputs)
    return {
        "format_version": 1,
        "model_name": row.model_name,
        "flavors": {
            "sklearn": {
                "path": "model.joblib",
                "serialization": "joblib",
                "sklearn_version": libraries.get("scikit-learn"),
            }
        },
        "signature": {"inputs": [{"name": name, "type": "double"} for name in inputs], "outputs": []},
        "requirements": [f"scikit-learn=={libraries['scikit-learn']}"] if "scikit-learn" in libraries else [],
        "python_version": libraries.get("python"),
        "features": orjson.loads(row.features),
    }


def _create_registry_tables() -> None:
    op.create_table(
        "alias_history",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("alias", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("valid_from", sa.DateTime(), nullable=False),
        sa.Column("valid_to", sa.DateTime(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_alias_history_lookup", "alias_history", ["model_name", "alias", "valid_from"], unique=False
    )
    op.create_table(
        "registered_model_tags",
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["model_name"], ["registered_models.name"]),
        sa.PrimaryKeyConstraint("model_name", "key"),
    )
    op.create_table(
        "model_version_tags",
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_name", "version"],
            ["model_versions.model_name", "model_versions.version"],
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_name", "version", "key"),
    )


def _backfill_alias_history() -> None:
    """Replay the alias events into periods, so history answers for moves made before this revision."""
    conn = op.get_bind()
    events = sa.table(
        "events",
        sa.column("id"),
        sa.column("ts"),
        sa.column("actor"),
        sa.column("kind"),
        sa.column("subject"),
        sa.column("reason"),
        sa.column("data"),
    )
    history = sa.table(
        "alias_history",
        sa.column("id"),
        sa.column("model_name"),
        sa.column("alias"),
        sa.column("version"),
        sa.column("valid_from"),
        sa.column("valid_to"),
        sa.column("actor"),
        sa.column("reason"),
    )
    moves = conn.execute(
        sa.select(events)
        .where(events.c.kind.in_(["alias.moved", "alias.removed"]))
        .order_by(events.c.ts, events.c.id)
    ).all()
    for event in moves:
        name, _, alias = event.subject.removeprefix("model:").rpartition("@")
        conn.execute(
            sa.update(history)
            .where(history.c.model_name == name, history.c.alias == alias, history.c.valid_to.is_(None))
            .values(valid_to=event.ts)
        )
        to_version = orjson.loads(event.data).get("to_version")
        if event.kind == "alias.moved" and to_version is not None:
            conn.execute(
                sa.insert(history).values(
                    model_name=name,
                    alias=alias,
                    version=to_version,
                    valid_from=event.ts,
                    valid_to=None,
                    actor=event.actor,
                    reason=event.reason,
                )
            )


def downgrade() -> None:
    op.drop_table("model_version_tags")
    op.drop_table("registered_model_tags")
    op.drop_index("ix_alias_history_lookup", table_name="alias_history")
    op.drop_table("alias_history")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("model_file")
        batch.drop_column("feature_service")
    op.drop_table("artifact_refs")
    op.drop_table("step_runs")
    op.drop_table("pipeline_runs")
    op.drop_table("run_tags")
    op.drop_table("run_latest_metrics")
    op.drop_index("ix_run_params_key_value", table_name="run_params")
    op.drop_index("ix_run_metrics_run_key_step", table_name="run_metrics")
    op.create_table(
        "run_metrics_v3",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "key", "step"),
    )
    # The older schema kept one value per (run, key, step): the latest logged one.
    op.execute(
        "INSERT INTO run_metrics_v3 (run_id, key, step, value, ts) "
        "SELECT run_id, key, step, value, ts FROM ("
        "  SELECT run_id, key, step, value, ts, ROW_NUMBER() OVER ("
        "    PARTITION BY run_id, key, step ORDER BY ts DESC, id DESC) AS rank"
        "  FROM run_metrics) AS ranked "
        "WHERE rank = 1"
    )
    op.drop_table("run_metrics")
    op.rename_table("run_metrics_v3", "run_metrics")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_status")
        batch.drop_index("ix_runs_parent_run_id")
        batch.drop_constraint("fk_runs_parent_run_id", type_="foreignkey")
        batch.drop_column("environment")
        batch.drop_column("parent_run_id")
        batch.drop_column("name")
