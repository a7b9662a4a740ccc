"""task kinds: `kind` names what every task does; `backup_type` is a backup's only,
an access's purpose gets its own column

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("restore", "access", "verify", "prune")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("purpose", sa.String(16), nullable=True))
        batch.alter_column("backup_type", existing_type=sa.String(16), nullable=True)
    jobs = sa.table(
        "jobs",
        sa.column("kind", sa.String),
        sa.column("backup_type", sa.String),
        sa.column("purpose", sa.String),
    )
    # Rows that said their kind only in backup_type (prune and verify did both).
    op.execute(
        jobs.update()
        .where(jobs.c.backup_type.in_(("prune", "verify")), jobs.c.kind == "backup")
        .values(kind=jobs.c.backup_type)
    )
    op.execute(jobs.update().where(jobs.c.kind == "access").values(purpose=jobs.c.backup_type))
    op.execute(jobs.update().where(jobs.c.kind.in_(KINDS)).values(backup_type=None))


def downgrade() -> None:
    jobs = sa.table(
        "jobs",
        sa.column("kind", sa.String),
        sa.column("backup_type", sa.String),
        sa.column("purpose", sa.String),
    )
    op.execute(jobs.update().where(jobs.c.kind == "access").values(backup_type=jobs.c.purpose))
    op.execute(
        jobs.update()
        .where(jobs.c.kind.in_(("restore", "verify", "prune")))
        .values(backup_type=jobs.c.kind)
    )
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("backup_type", existing_type=sa.String(16), nullable=False)
        batch.drop_column("purpose")
