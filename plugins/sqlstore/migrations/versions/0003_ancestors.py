"""Instances started by a subworkflow step record their chain of parents (JSON, root first).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("legato_instances") as batch:
        batch.add_column(sa.Column("ancestors", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("legato_instances") as batch:
        batch.drop_column("ancestors")
