"""offsite copies: targets (credentials and key sealed), uploaded objects, copied
points (their manifests) and uploads under way.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHEN = sa.DateTime(timezone=True)


def _target_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["target_id"],
        ["copy_targets.id"],
        name=op.f(f"fk_{table}_target_id_copy_targets"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "copy_targets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("path_style", sa.Boolean(), nullable=False),
        sa.Column("ca_file", sa.Text(), nullable=True),
        sa.Column("access_key", sa.Text(), nullable=False),
        sa.Column("secret_key_sealed", sa.Text(), nullable=False),
        sa.Column("copy_key_sealed", sa.Text(), nullable=False),
        sa.Column("key_fingerprint", sa.String(32), nullable=False),
        sa.Column("lock_mode", sa.String(16), nullable=False),
        sa.Column("lock_days", sa.Integer(), nullable=False),
        sa.Column("limit_mb_s", sa.Float(), nullable=True),
        sa.Column("full_every", sa.Integer(), nullable=False),
        sa.Column("vm_pattern", sa.String(255), nullable=True),
        sa.Column("keep", sa.JSON(), nullable=True),
        sa.Column("config_digest", sa.String(64), nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_copy_targets")),
        sa.UniqueConstraint("name", name=op.f("uq_copy_targets_name")),
    )
    op.create_table(
        "copy_objects",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(32), nullable=False),
        sa.Column("point_id", sa.String(32), nullable=False),
        sa.Column("disk_key", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.String(32), nullable=True),
        sa.Column("plain_size", sa.BigInteger(), nullable=False),
        sa.Column("plain_sha256", sa.String(64), nullable=False),
        sa.Column("sealed_size", sa.BigInteger(), nullable=False),
        sa.Column("retain_until", _WHEN, nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
        _target_fk("copy_objects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_copy_objects")),
        sa.UniqueConstraint("target_id", "point_id", "disk_key", name="uq_copy_objects_point_disk"),
    )
    op.create_index(op.f("ix_copy_objects_point_id"), "copy_objects", ["point_id"])
    op.create_table(
        "copy_points",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(32), nullable=False),
        sa.Column("restore_point_id", sa.String(32), nullable=False),
        sa.Column("vm_id", sa.String(32), nullable=True),
        sa.Column("vm_name", sa.String(255), nullable=False),
        sa.Column("point_created_at", _WHEN, nullable=False),
        sa.Column("manifest_name", sa.String(128), nullable=False),
        sa.Column("manifest_version", sa.String(255), nullable=False),
        sa.Column("copied_at", _WHEN, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("retain_until", _WHEN, nullable=True),
        sa.Column("verified_at", _WHEN, nullable=True),
        sa.Column("verify_error", sa.Text(), nullable=True),
        _target_fk("copy_points"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_copy_points")),
        sa.UniqueConstraint("target_id", "restore_point_id", name="uq_copy_points_target_point"),
    )
    op.create_index(op.f("ix_copy_points_restore_point_id"), "copy_points", ["restore_point_id"])
    op.create_table(
        "copy_uploads",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(32), nullable=False),
        sa.Column("point_id", sa.String(32), nullable=False),
        sa.Column("disk_key", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("upload_id", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("parts", sa.JSON(), nullable=False),
        sa.Column("started_at", _WHEN, nullable=False),
        _target_fk("copy_uploads"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_copy_uploads")),
        sa.UniqueConstraint("target_id", "point_id", "disk_key", name="uq_copy_uploads_point_disk"),
    )


def downgrade() -> None:
    op.drop_table("copy_uploads")
    op.drop_index(op.f("ix_copy_points_restore_point_id"), "copy_points")
    op.drop_table("copy_points")
    op.drop_index(op.f("ix_copy_objects_point_id"), "copy_objects")
    op.drop_table("copy_objects")
    op.drop_table("copy_targets")
