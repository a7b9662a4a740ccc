"""task owner: the hub that runs a task, so that hubs sharing one PostgreSQL
database clean up only their own tasks at start-up

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 18:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("hub_id", sa.String(32), nullable=True))
        batch.create_index("ix_jobs_hub_id", ["hub_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_hub_id")
        batch.drop_column("hub_id")
