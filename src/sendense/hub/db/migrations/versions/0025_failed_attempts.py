"""failed attempts: logins and node enrollments under their limits, in the
database instead of the hub's memory, so that a restarted hub, or another hub on
the same database, counts them too. Keys are keyed digests, never user names.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-02 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "failed_attempts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failed_attempts")),
    )
    op.create_index("ix_failed_attempts_scope_key_at", "failed_attempts", ["scope", "key", "at"])
    op.create_index("ix_failed_attempts_at", "failed_attempts", ["at"])


def downgrade() -> None:
    op.drop_index("ix_failed_attempts_at", table_name="failed_attempts")
    op.drop_index("ix_failed_attempts_scope_key_at", table_name="failed_attempts")
    op.drop_table("failed_attempts")
