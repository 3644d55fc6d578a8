"""Materialisation runs: one row per view per `materialize`, the history incremental runs continue from.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "materialization_runs",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("view_name", sa.String(length=200), nullable=False),
        sa.Column("view_version", sa.Integer(), nullable=False),
        sa.Column("incremental", sa.Boolean(), nullable=False),
        sa.Column("range_start", sa.DateTime(), nullable=False),
        sa.Column("range_end", sa.DateTime(), nullable=False),
        sa.Column("rows_written", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_materialization_runs_view_name"), "materialization_runs", ["view_name"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_materialization_runs_view_name"), table_name="materialization_runs")
    op.drop_table("materialization_runs")
