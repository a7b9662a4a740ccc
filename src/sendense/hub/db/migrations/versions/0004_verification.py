"""verification: the areas each backup read, and verification results

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("restore_point_disks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("areas", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("checksum_block", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("verify_error", sa.Text(), nullable=True))
    with op.batch_alter_table("restore_points", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("verify_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("restore_points", schema=None) as batch_op:
        batch_op.drop_column("verify_error")
        batch_op.drop_column("verified_at")
    with op.batch_alter_table("restore_point_disks", schema=None) as batch_op:
        batch_op.drop_column("verify_error")
        batch_op.drop_column("verified_at")
        batch_op.drop_column("checksum_block")
        batch_op.drop_column("areas")
