"""a layer's reserved bytes: what its backup may still write into the repository
(the hub's estimate when it planned the layer), so that backups running at once
on one repository are checked together, not each against the same free space.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-02 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("restore_point_disks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reserved_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("restore_point_disks", schema=None) as batch_op:
        batch_op.drop_column("reserved_bytes")
