"""Triggers: each trigger's checkpoint (what it has consumed: a cron trigger's last tick), the
workflows whose triggers are paused (`legato triggers pause`), and the time a run is for
(`workflow.run_ts`: a cron tick's scheduled time) on the instance (legato.triggers).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "legato_trigger_checkpoints",
        sa.Column("workflow_id", sa.String(), nullable=False),
        sa.Column("trigger_key", sa.String(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("fired_at", sa.Float(), nullable=True),
        sa.Column("saved_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("workflow_id", "trigger_key"),
    )
    op.create_table(
        "legato_trigger_pauses",
        sa.Column("workflow_id", sa.String(), nullable=False),
        sa.Column("paused_by", sa.String(), nullable=False),
        sa.Column("paused_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("workflow_id"),
    )
    # Instances recorded before triggers ran for the time they were created (NULL: created_at).
    with op.batch_alter_table("legato_instances") as batch:
        batch.add_column(sa.Column("run_ts", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("legato_instances") as batch:
        batch.drop_column("run_ts")
    op.drop_table("legato_trigger_pauses")
    op.drop_table("legato_trigger_checkpoints")
