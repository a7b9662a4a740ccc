"""indexes for a database of 100,000 restore points: a task's point (a backup's
commit or failure, start-up's reconcile, housekeeping, which keeps every task a
point refers to), points of a status (unfinished ones at start-up, invalid ones
for the notifier, complete ones per VM for the dashboard) and a layer's children
(prune; every layer deleted, whose foreign key check looks for them).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-01 21:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_restore_points_job_id", "restore_points", ["job_id"])
    op.create_index(
        "ix_restore_points_status_vm_created", "restore_points", ["status", "vm_id", "created_at"]
    )
    op.create_index("ix_restore_point_disks_parent_id", "restore_point_disks", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_restore_point_disks_parent_id", table_name="restore_point_disks")
    op.drop_index("ix_restore_points_status_vm_created", table_name="restore_points")
    op.drop_index("ix_restore_points_job_id", table_name="restore_points")
