"""Restore points, their disk layers (one QCOW2 file each, a chain through
`parent_id`), and the merge steps by which a prune takes a layer out of its chain."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from sendense.hub.db.models.base import Base, UtcDateTime, enum_type, new_id, utcnow


class PointStatus(enum.StrEnum):
    INCOMPLETE = "incomplete"
    COMPLETE = "complete"
    INVALID = "invalid"


class RestorePoint(Base):
    __tablename__ = "restore_points"
    # A VM's points by status and time (the timeline, prune); points of a status
    # by VM (the dashboard, start-up's unfinished ones, the notifier's invalid
    # ones: status first, or SQLite probes every task for reconcile's query); a
    # task's point (a backup's commit or failure, reconcile, and housekeeping,
    # which keeps a task while a point refers to it). docs/decisions.md.
    __table_args__ = (
        Index("ix_restore_points_vm_status_created", "vm_id", "status", "created_at"),
        Index("ix_restore_points_status_vm_created", "status", "vm_id", "created_at"),
        Index("ix_restore_points_job_id", "job_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    repository_id: Mapped[str] = mapped_column(ForeignKey("repositories.id"))
    status: Mapped[PointStatus] = mapped_column(
        enum_type(PointStatus, "point_status"), default=PointStatus.INCOMPLETE
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # A protected point is never pruned.
    protected: Mapped[bool] = mapped_column(default=False, server_default=false())
    verified_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    verify_error: Mapped[str | None] = mapped_column(Text)
    # The VM's shape at the backup (contract.VmLayout): what a whole-VM restore
    # rebuilds. None for points made before it was recorded.
    layout: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    disks: Mapped[list[RestorePointDisk]] = relationship(
        back_populates="restore_point", order_by="RestorePointDisk.disk_key"
    )


class RestorePointDisk(Base):
    __tablename__ = "restore_point_disks"
    # A layer's children: prune rebases them, and deleting a layer checks its
    # foreign key (a scan of every layer without the index).
    __table_args__ = (
        UniqueConstraint("restore_point_id", "disk_key", name="uq_restore_point_disks_point_key"),
        Index("ix_restore_point_disks_parent_id", "parent_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    restore_point_id: Mapped[str] = mapped_column(ForeignKey("restore_points.id"))
    disk_key: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("restore_point_disks.id"))
    # Relative to the repository root; never derived from the VM's name.
    file_path: Mapped[str] = mapped_column(Text, unique=True)
    # What was read: "full" (the whole disk) or "incremental" (the changed areas).
    # A disk planned as an incremental and read whole stays an overlay on its
    # parent (parent_id kept, it counts in its chain's length) with a "full" type
    # and the node's reason.
    backup_type: Mapped[str] = mapped_column(String(16))
    full_reason: Mapped[str | None] = mapped_column(Text)
    virtual_size: Mapped[int] = mapped_column(BigInteger)
    data_bytes: Mapped[int | None] = mapped_column(BigInteger)
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    # While its backup runs: what the hub estimated it may write (planning.py),
    # counted against the repository's free space for the other backups.
    reserved_bytes: Mapped[int | None] = mapped_column(BigInteger)
    change_id: Mapped[str | None] = mapped_column(Text)
    checksum: Mapped[str | None] = mapped_column(Text)
    duration_s: Mapped[float | None] = mapped_column(Float)
    rate_bytes_per_s: Mapped[float | None] = mapped_column(Float)
    status: Mapped[PointStatus] = mapped_column(
        enum_type(PointStatus, "disk_point_status"), default=PointStatus.INCOMPLETE
    )
    # What the backup read (checksum.pack_areas) and the checksum's block size:
    # a verifier reads the same blocks from this layer again.
    areas: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    checksum_block: Mapped[int | None] = mapped_column(Integer)
    verified_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    verify_error: Mapped[str | None] = mapped_column(Text)

    restore_point: Mapped[RestorePoint] = relationship(back_populates="disks")


class Merge(Base):
    """One step of a prune, recorded before it starts: rebase `child_id` from the
    doomed layer onto `new_parent_id` (None: standalone), then drop the doomed
    layer. Start-up rolls every unfinished step forward (prune.py).

    `state`: rebasing -> rebased (the doomed layer's file may go), or failed (the
    child did not read as `expected_checksum` after the rebase: the doomed layer is
    kept, the child marked invalid, recover leaves the row alone). `expected_*` is
    the child's checksum over `expected_areas`, read through the old chain before
    the rebase; `error` says why the step is not finished yet."""

    __tablename__ = "merges"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    doomed_id: Mapped[str] = mapped_column(String(32))
    child_id: Mapped[str | None] = mapped_column(String(32))
    new_parent_id: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="rebasing")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    expected_checksum: Mapped[str | None] = mapped_column(Text)
    expected_areas: Mapped[bytes | None] = mapped_column(LargeBinary)
    expected_block: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
