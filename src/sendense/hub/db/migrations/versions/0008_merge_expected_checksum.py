"""merge safety: a merge step records the checksum its child must still read after
the rebase (computed through the old chain before it), and why it is not finished

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("merges") as batch:
        batch.add_column(sa.Column("expected_checksum", sa.Text(), nullable=True))
        batch.add_column(sa.Column("expected_areas", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("expected_block", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("merges") as batch:
        batch.drop_column("error")
        batch.drop_column("expected_block")
        batch.drop_column("expected_areas")
        batch.drop_column("expected_checksum")
