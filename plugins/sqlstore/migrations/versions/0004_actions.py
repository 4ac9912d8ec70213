"""Actions asked of an instance or one of its steps from any process (stop, kill, restart, skip…),
applied by the process that runs the instance (legato.actions).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "legato_actions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(), nullable=False),
        sa.Column("step_id", sa.String(), nullable=True),
        sa.Column("verb", sa.String(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(), nullable=False),
        sa.Column("requested_at", sa.Float(), nullable=False),
        sa.Column("applied_at", sa.Float(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
    )
    op.create_index("ix_legato_actions_instance", "legato_actions", ["instance_id", "id"])


def downgrade() -> None:
    op.drop_table("legato_actions")
