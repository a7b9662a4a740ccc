"""notifications: targets (SMTP, webhook; the secret sealed), rules, an outbox of
events not yet delivered and the marks of what the notifier has handled.

Revision ID: 0017
Revises: 0014
Create Date: 2026-12-01 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notify_targets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_count", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(32), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_targets")),
        sa.UniqueConstraint("name", name=op.f("uq_notify_targets_name")),
    )
    op.create_table(
        "notify_rules",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("target_id", sa.String(32), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("vm_pattern", sa.String(255), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("free_below_percent", sa.Float(), nullable=True),
        sa.Column("node_down_minutes", sa.Float(), nullable=True),
        sa.Column("max_age_hours", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["notify_targets.id"],
            name=op.f("fk_notify_rules_target_id_notify_targets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_notify_rules_name")),
    )
    op.create_table(
        "notify_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("target_id", sa.String(32), nullable=False),
        sa.Column("event", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["notify_targets.id"],
            name=op.f("fk_notify_outbox_target_id_notify_targets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_outbox")),
    )
    op.create_table(
        "notify_marks",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_notify_marks")),
    )
    op.create_index("ix_notify_marks_at", "notify_marks", ["at"])


def downgrade() -> None:
    op.drop_index("ix_notify_marks_at", "notify_marks")
    op.drop_table("notify_marks")
    op.drop_table("notify_outbox")
    op.drop_table("notify_rules")
    op.drop_table("notify_targets")
