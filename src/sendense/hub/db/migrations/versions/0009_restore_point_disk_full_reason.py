"""restore point disks: `full_reason`, why a disk planned as an incremental was
read whole (VMware refused its change ID, CBT off); such a layer's backup_type is
"full" while it stays an overlay on its parent (its chain goes on)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:00:00

(Written beside 0008 and re-pointed onto it when the two were merged.)
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("restore_point_disks") as batch:
        batch.add_column(sa.Column("full_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("restore_point_disks") as batch:
        batch.drop_column("full_reason")
