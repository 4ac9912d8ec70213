"""Signals: the signal instances `legato signal send`, the API and steps' signal_outputs store
(legato.signals), numbered per name, deduplicated by request id.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"  # after the triggers' checkpoints (0007), merged into this branch
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "legato_signals",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", "seq"),
        sa.UniqueConstraint("name", "request_id", name="uq_legato_signals_request"),
    )


def downgrade() -> None:
    op.drop_table("legato_signals")
