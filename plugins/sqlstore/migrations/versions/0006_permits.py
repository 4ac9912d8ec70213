"""Permits: the permits step attempts hold (step_concurrency, instance_step_concurrency, tags) and
the tag limits set with `legato permits set` (legato.permits).

Revision ID: 0006
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"  # re-chained at the merges into serve (actions 0004, strategies 0005)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "legato_permits",
        sa.Column("permit_key", sa.String(), nullable=False),
        sa.Column("instance_id", sa.String(), nullable=False),
        sa.Column("step_id", sa.String(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("permit_key", "instance_id", "step_id", "attempt"),
    )
    op.create_index("ix_legato_permits_holder", "legato_permits", ["instance_id", "step_id", "attempt"])
    op.create_table(
        "legato_tag_permits",
        sa.Column("tag", sa.String(), nullable=False),
        sa.Column("max_allowed", sa.Integer(), nullable=False),
        sa.Column("set_by", sa.String(), nullable=False),
        sa.Column("set_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tag"),
    )


def downgrade() -> None:
    op.drop_table("legato_tag_permits")
    op.drop_index("ix_legato_permits_holder", table_name="legato_permits")
    op.drop_table("legato_permits")
