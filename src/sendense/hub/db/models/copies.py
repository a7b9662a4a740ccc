"""The offsite copies' tables: targets, the objects uploaded to them, the points
each holds (one manifest each) and the uploads under way (for resuming)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sendense.hub.db.models.base import Base, UtcDateTime, new_id, utcnow


class CopyTarget(Base):
    """An S3 bucket (and prefix) that receives copies. The secret key and the
    target's encryption key are sealed (auth/secrets.py)."""

    __tablename__ = "copy_targets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    endpoint: Mapped[str] = mapped_column(Text)
    bucket: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(Text, default="")
    region: Mapped[str] = mapped_column(String(64))
    path_style: Mapped[bool] = mapped_column(default=True)
    ca_file: Mapped[str | None] = mapped_column(Text)
    access_key: Mapped[str] = mapped_column(Text)
    secret_key_sealed: Mapped[str] = mapped_column(Text)
    copy_key_sealed: Mapped[str] = mapped_column(Text)
    key_fingerprint: Mapped[str] = mapped_column(String(32))
    # none, governance or compliance; objects are kept `lock_days` from their upload.
    lock_mode: Mapped[str] = mapped_column(String(16), default="none")
    lock_days: Mapped[int] = mapped_column(Integer, default=0)
    limit_mb_s: Mapped[float | None] = mapped_column(Float)
    # A synthetic full every N points of a disk's copy chain.
    full_every: Mapped[int] = mapped_column(Integer, default=7)
    # Which VMs' new verified points are copied by themselves (fnmatch on the
    # VM's name); None: only what is asked for.
    vm_pattern: Mapped[str | None] = mapped_column(String(255))
    # The copy's own keep-* rules (retention.rules.KeepRules fields); None: keep all.
    keep: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # SHA-256 of the hub's configuration last written to the bucket.
    config_digest: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class CopyObject(Base):
    """One disk layer of one point on a target: a full (standalone QCOW2) or an
    incremental (a QCOW2 overlay on its parent object's layer)."""

    __tablename__ = "copy_objects"
    __table_args__ = (
        UniqueConstraint("target_id", "point_id", "disk_key", name="uq_copy_objects_point_disk"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    target_id: Mapped[str] = mapped_column(ForeignKey("copy_targets.id", ondelete="CASCADE"))
    point_id: Mapped[str] = mapped_column(String(32), index=True)
    disk_key: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[str] = mapped_column(String(255), default="")
    kind: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[str | None] = mapped_column(String(32))
    plain_size: Mapped[int] = mapped_column(BigInteger)
    plain_sha256: Mapped[str] = mapped_column(String(64))
    sealed_size: Mapped[int] = mapped_column(BigInteger)
    retain_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class CopyPoint(Base):
    """A restore point a target holds, by its manifest. `restore_point_id` is the
    point's id on the hub that made it (not a foreign key: an imported point may
    not be in this hub's catalogue until it is fetched)."""

    __tablename__ = "copy_points"
    __table_args__ = (
        UniqueConstraint("target_id", "restore_point_id", name="uq_copy_points_target_point"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    target_id: Mapped[str] = mapped_column(ForeignKey("copy_targets.id", ondelete="CASCADE"))
    restore_point_id: Mapped[str] = mapped_column(String(32), index=True)
    vm_id: Mapped[str | None] = mapped_column(String(32))
    vm_name: Mapped[str] = mapped_column(String(255))
    point_created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    manifest_name: Mapped[str] = mapped_column(String(128))
    manifest_version: Mapped[str] = mapped_column(String(255), default="")
    copied_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="copied")
    # The manifest's lock (None: not locked).
    retain_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    verified_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    verify_error: Mapped[str | None] = mapped_column(Text)


class CopyUpload(Base):
    """A multipart upload under way: what a resumed copy continues (the parts the
    bucket holds are not sent again) while its source is unchanged."""

    __tablename__ = "copy_uploads"
    __table_args__ = (
        UniqueConstraint("target_id", "point_id", "disk_key", name="uq_copy_uploads_point_disk"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    target_id: Mapped[str] = mapped_column(ForeignKey("copy_targets.id", ondelete="CASCADE"))
    point_id: Mapped[str] = mapped_column(String(32))
    disk_key: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    upload_id: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    # Each part's plaintext range, by part number: {"1": [start, end], ...}.
    parts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
