"""Run strategies: each instance records the strategy it started under, and a STRICT_SEQUENTIAL
queue unblocked past a failed instance remembers which run it was unblocked at.

Revision ID: 0005
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"  # re-chained at the merge of strategies into serve
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Instances recorded before strategies were enforced keep none: they start whenever asked.
    with op.batch_alter_table("legato_instances") as batch:
        batch.add_column(sa.Column("run_strategy", sa.String(), nullable=True))
        batch.add_column(sa.Column("workflow_concurrency", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("unblocked_run", sa.Integer(), nullable=True))
    op.create_index("ix_legato_instances_workflow_status", "legato_instances", ["workflow_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_legato_instances_workflow_status", table_name="legato_instances")
    with op.batch_alter_table("legato_instances") as batch:
        batch.drop_column("unblocked_run")
        batch.drop_column("workflow_concurrency")
        batch.drop_column("run_strategy")
