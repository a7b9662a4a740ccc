"""repository usage samples: each repository's used, free and total bytes (and what
its backups took) once a day, for the usage history.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "repository_usage_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("repository_id", sa.String(32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("free_bytes", sa.BigInteger(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("backup_bytes", sa.BigInteger(), nullable=True),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repositories.id"],
            name=op.f("fk_repository_usage_samples_repository_id_repositories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repository_usage_samples")),
        sa.UniqueConstraint("repository_id", "day", name="uq_repository_usage_samples_repo_day"),
    )
    op.create_index("ix_repository_usage_samples_day", "repository_usage_samples", ["day"])


def downgrade() -> None:
    op.drop_index("ix_repository_usage_samples_day", "repository_usage_samples")
    op.drop_table("repository_usage_samples")
