"""Tasks (`jobs` rows): what each does, the states it goes through, who started it."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from sendense.hub.db.models.base import Base, UtcDateTime, enum_type, new_id, utcnow
from sendense.hub.db.models.vms import Vm


class JobState(enum.StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    FINALIZING = "finalizing"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.PREPARING, JobState.RUNNING, JobState.FINALIZING)


class TaskKind(enum.StrEnum):
    """What a task (a `jobs` row) does."""

    BACKUP = "backup"
    RESTORE = "restore"  # a whole VM to vCenter through the node
    ACCESS = "access"  # disks served over NBD (instant access, or a restore's source)
    VERIFY = "verify"
    PRUNE = "prune"
    EXPORT = "export"  # a disk of a restore point downloaded (raw, QCOW2, VMDK)
    SCHEDULE = "schedule"  # one run of a policy's schedule: the parent of its backups
    BROWSE = "browse"  # a restore point's files browsed in an appliance (file-level restore)
    COPY = "copy"  # a restore point uploaded to an offsite copy target
    FETCH = "fetch"  # a copied restore point brought back into a repository


class Job(Base):
    __tablename__ = "jobs"
    # A VM's newest task of a kind (the dashboard, the last backup's state);
    # failures of the last day, what runs now (the dashboard).
    __table_args__ = (
        Index("ix_jobs_vm_kind_created", "vm_id", "kind", "created_at"),
        Index("ix_jobs_state_finished", "state", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # None for a task of no VM (a schedule run).
    vm_id: Mapped[str | None] = mapped_column(ForeignKey("vms.id"))
    kind: Mapped[TaskKind] = mapped_column(
        enum_type(TaskKind, "task_kind"), default=TaskKind.BACKUP
    )
    # The hub that runs it (its data directory's id): start-up cleans up only its
    # own tasks when several hubs share one PostgreSQL database. None: older rows.
    hub_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # Backups only: auto, full or incremental as asked.
    backup_type: Mapped[str | None] = mapped_column(String(16))
    # Accesses only: "instant" (people and tools) or "restore" (a node reads it).
    purpose: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[JobState] = mapped_column(
        enum_type(JobState, "job_state"), default=JobState.QUEUED
    )
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Who asked: "token:<name>", "user:<name>" or "schedule"; None for older rows.
    started_by: Mapped[str | None] = mapped_column(String(128))
    # A schedule run is the parent of the backups it started.
    parent_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # A failed task's stable code (TaskErrorCode) beside its message.
    error_code: Mapped[str | None] = mapped_column(String(48))
    # A finished backup's seconds by where they went (common.time_split.JobTimeSplit):
    # {"source_s", "target_s", "bottleneck", "disks": {key: the same}}.
    time_split: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The restore point a task reads (a download, a browsing session): prune keeps
    # the points of running ones. None for other tasks and older rows.
    restore_point_id: Mapped[str | None] = mapped_column(String(32))

    vm: Mapped[Vm | None] = relationship()
