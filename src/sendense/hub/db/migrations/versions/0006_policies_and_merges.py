"""policies, their assignments, prune merges, protected restore points

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 10:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Utc = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        *(
            sa.Column(f"keep_{n}", sa.Integer(), nullable=False)
            for n in ("last", "hourly", "daily", "weekly", "monthly", "yearly")
        ),
        sa.Column("max_chain_length", sa.Integer(), nullable=True),
        sa.Column("schedule", sa.String(128), nullable=True),
        sa.Column("last_run_at", Utc, nullable=True),
        sa.Column("created_at", Utc, nullable=False),
    )
    op.create_table(
        "policy_assignments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "policy_id",
            sa.String(32),
            sa.ForeignKey("policies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.UniqueConstraint("kind", "value", name="uq_policy_assignments_kind_value"),
    )
    op.create_table(
        "merges",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("doomed_id", sa.String(32), nullable=False),
        sa.Column("child_id", sa.String(32), nullable=True),
        sa.Column("new_parent_id", sa.String(32), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", Utc, nullable=False),
    )
    with op.batch_alter_table("restore_points", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("protected", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("restore_points", schema=None) as batch_op:
        batch_op.drop_column("protected")
    op.drop_table("merges")
    op.drop_table("policy_assignments")
    op.drop_table("policies")
