"""Leases record their holder's process (host, pid, start time, pid namespace), so that a dead
holder on the same machine frees its lease at once.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("legato_instances") as batch:
        batch.add_column(sa.Column("owner_host", sa.String(), nullable=True))
        batch.add_column(sa.Column("owner_pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("owner_started", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("owner_namespace", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("legato_instances") as batch:
        for column in ("owner_namespace", "owner_started", "owner_pid", "owner_host"):
            batch.drop_column(column)
