"""Endpoint routes: an endpoint maps to several model versions (primary, canary, shadow, experiment arms).

Each existing endpoint becomes a primary route to the alias it followed; endpoints gain a salt for sticky
assignment and serving settings (cache age, batching, NaN policy).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "endpoint_routes",
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("alias", sa.String(length=100), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("mode", sa.String(length=20), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["endpoint"], ["endpoints.name"]),
        sa.ForeignKeyConstraint(["model_name"], ["registered_models.name"]),
        sa.PrimaryKeyConstraint("endpoint", "name"),
    )
    op.execute(
        "INSERT INTO endpoint_routes (endpoint, name, model_name, alias, version, mode, weight) "
        "SELECT name, 'primary', model_name, alias, NULL, 'primary', 100.0 FROM endpoints"
    )
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("salt", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("settings", sa.Text(), nullable=False, server_default="{}"))
    op.execute("UPDATE endpoints SET salt = name")
    with op.batch_alter_table("endpoints") as batch:
        batch.alter_column("salt", existing_type=sa.String(length=200), nullable=False)
        batch.drop_column("model_name")
        batch.drop_column("alias")


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("model_name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("alias", sa.String(length=100), nullable=True))
    op.execute(
        "UPDATE endpoints SET "
        "model_name = (SELECT r.model_name FROM endpoint_routes r "
        "WHERE r.endpoint = endpoints.name AND r.name = 'primary'), "
        "alias = (SELECT COALESCE(r.alias, 'champion') FROM endpoint_routes r "
        "WHERE r.endpoint = endpoints.name AND r.name = 'primary')"
    )
    with op.batch_alter_table("endpoints") as batch:
        batch.alter_column("model_name", existing_type=sa.String(length=200), nullable=False)
        batch.alter_column("alias", existing_type=sa.String(length=100), nullable=False)
        batch.create_foreign_key("fk_endpoints_model_name", "registered_models", ["model_name"], ["name"])
        batch.drop_column("settings")
        batch.drop_column("salt")
    op.drop_table("endpoint_routes")
