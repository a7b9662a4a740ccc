"""tasks: who started each (a token's or user's name, or the schedule), its parent
(a schedule run, a task of no VM, is the parent of its backups), a stable error code beside the
message, and where a finished backup's time went (reading, network, writing).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("vm_id", existing_type=sa.String(32), nullable=True)
        batch.add_column(sa.Column("started_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("parent_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("error_code", sa.String(48), nullable=True))
        batch.add_column(sa.Column("time_split", sa.JSON(), nullable=True))
        batch.create_index("ix_jobs_parent_id", ["parent_id"])
        batch.create_index("ix_jobs_created_at", ["created_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_created_at")
        batch.drop_index("ix_jobs_parent_id")
        batch.drop_column("time_split")
        batch.drop_column("error_code")
        batch.drop_column("parent_id")
        batch.drop_column("started_by")
    op.execute("DELETE FROM jobs WHERE vm_id IS NULL")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("vm_id", existing_type=sa.String(32), nullable=False)
