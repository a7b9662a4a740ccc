"""Tables of the hub. State that must survive a crash lives here, never only in memory."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware on both databases (SQLite returns naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


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


class PointStatus(enum.StrEnum):
    INCOMPLETE = "incomplete"
    COMPLETE = "complete"
    INVALID = "invalid"


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    return Enum(cls, name=name, native_enum=False, length=16, values_callable=_values)


def _values(cls: type[enum.StrEnum]) -> list[str]:
    return [member.value for member in cls]


class Repository(Base):
    __tablename__ = "repositories"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class RepositoryUsageSample(Base):
    """A repository's space on one day (in the hub's time zone), written by
    housekeeping: at most one row per repository and day, the day's first sample
    kept. `backup_bytes`: what its restore points' files took (None: not known)."""

    __tablename__ = "repository_usage_samples"
    __table_args__ = (
        UniqueConstraint("repository_id", "day", name="uq_repository_usage_samples_repo_day"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repository_id: Mapped[str] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    day: Mapped[date] = mapped_column(Date, index=True)
    used_bytes: Mapped[int] = mapped_column(BigInteger)
    free_bytes: Mapped[int] = mapped_column(BigInteger)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    backup_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sampled_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # The node's SSH public key (OpenSSH format); its tunnel logs in with it.
    public_key: Mapped[str | None] = mapped_column(Text)
    # Unique: one key, one node, ever (a revoked node's key is not taken again).
    key_fingerprint: Mapped[str | None] = mapped_column(String(128), unique=True)
    # The system user its tunnel logs in as on a hub (`sendense-n-<id>`).
    system_user: Mapped[str | None] = mapped_column(String(32), unique=True)
    # Hub-side loopback port of the reverse forward to the node's API (8081).
    reverse_port: Mapped[int | None] = mapped_column(Integer, unique=True)
    # The node's API token for the hub, encrypted with the hub's secret key.
    api_token_sealed: Mapped[str | None] = mapped_column(Text)
    revoked: Mapped[bool] = mapped_column(default=False)
    connected: Mapped[bool] = mapped_column(default=False)
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class NodeAccount(Base):
    """A system user a hub made on its machine for a node's tunnel: recorded before
    `useradd`, so a hub that restarts finds (and removes) the users it made for
    nodes that are revoked or gone, and only those."""

    __tablename__ = "node_accounts"

    hub_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(32), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(32))
    uid: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class PairingCode(Base):
    """Single use, short-lived; only its digest is stored."""

    __tablename__ = "pairing_codes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Vcenter(Base):
    """A vCenter the hub backs up from, through one node."""

    __tablename__ = "vcenters"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    host: Mapped[str] = mapped_column(String(255), unique=True)
    username: Mapped[str] = mapped_column(String(255))
    password_sealed: Mapped[str] = mapped_column(Text)
    thumbprint: Mapped[str | None] = mapped_column(String(128))
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Vm(Base):
    """A VM is (vCenter, instance UUID), not its name: a VM deleted and re-created
    under its name, or one of the same name on another vCenter, is another row and
    another chain; a renamed VM keeps its row. The name is what it was last called
    (not unique); the repository directory is named by `id`."""

    __tablename__ = "vms"
    __table_args__ = (UniqueConstraint("vcenter_id", "vmware_uuid", name="uq_vms_vcenter_uuid"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255), index=True)
    # VMware instance UUID when known (None: not backed up through a vCenter yet,
    # or prepared from outside without one).
    vmware_uuid: Mapped[str | None] = mapped_column(String(64))
    # The vCenter it lives on; None for a VM prepared from outside without one, or
    # one from before 0011 whose vCenter could not be told (its next backup from a
    # vCenter adopts it).
    vcenter_id: Mapped[str | None] = mapped_column(ForeignKey("vcenters.id"))
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.id"))
    # The VM's lock: set by a conditional UPDATE (`WHERE active_job_id IS NULL`),
    # atomic on SQLite and PostgreSQL alike. One job per VM at a time.
    active_job_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    disks: Mapped[list[VmDisk]] = relationship(back_populates="vm", order_by="VmDisk.disk_key")


class VmDisk(Base):
    __tablename__ = "vm_disks"
    __table_args__ = (UniqueConstraint("vm_id", "disk_key", name="uq_vm_disks_vm_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"))
    # The real VirtualDisk.key (2000, 2016, 16000, 31000...), never index + 2000.
    disk_key: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(255))
    capacity_bytes: Mapped[int] = mapped_column(BigInteger)
    datastore_path: Mapped[str | None] = mapped_column(Text)
    removed: Mapped[bool] = mapped_column(default=False)

    vm: Mapped[Vm] = relationship(back_populates="disks")


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
    kind: Mapped[TaskKind] = mapped_column(_enum(TaskKind, "task_kind"), default=TaskKind.BACKUP)
    # The hub that runs it (its data directory's id): start-up cleans up only its
    # own tasks when several hubs share one PostgreSQL database. None: older rows.
    hub_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # Backups only: auto, full or incremental as asked.
    backup_type: Mapped[str | None] = mapped_column(String(16))
    # Accesses only: "instant" (people and tools) or "restore" (a node reads it).
    purpose: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.QUEUED)
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
        _enum(PointStatus, "point_status"), default=PointStatus.INCOMPLETE
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
    change_id: Mapped[str | None] = mapped_column(Text)
    checksum: Mapped[str | None] = mapped_column(Text)
    duration_s: Mapped[float | None] = mapped_column(Float)
    rate_bytes_per_s: Mapped[float | None] = mapped_column(Float)
    status: Mapped[PointStatus] = mapped_column(
        _enum(PointStatus, "disk_point_status"), default=PointStatus.INCOMPLETE
    )
    # What the backup read (checksum.pack_areas) and the checksum's block size:
    # a verifier reads the same blocks from this layer again.
    areas: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    checksum_block: Mapped[int | None] = mapped_column(Integer)
    verified_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    verify_error: Mapped[str | None] = mapped_column(Text)

    restore_point: Mapped[RestorePoint] = relationship(back_populates="disks")


class NbdPort(Base):
    """One row per allocated port; the primary key makes double allocation impossible."""

    __tablename__ = "nbd_ports"

    port: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    disk_key: Mapped[int | None] = mapped_column(Integer)
    owner: Mapped[str] = mapped_column(String(64))
    allocated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class NbdExport(Base):
    __tablename__ = "nbd_exports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    disk_key: Mapped[int] = mapped_column(Integer)
    port: Mapped[int] = mapped_column(Integer, unique=True)
    export_name: Mapped[str] = mapped_column(String(128))
    file_path: Mapped[str] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    # /proc/<pid>/stat start time: a recycled pid never matches it.
    pid_start_ticks: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # A role of sendense.hub.auth.roles.Role; tokens from before 0012 are admin.
    role: Mapped[str] = mapped_column(String(16), default="admin")
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # The user the token acts for (a login's session); None: a standalone token.
    user_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Who made it: "token:<id>" through the API, "cli" offline, "first-start".
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class User(Base):
    """A person who logs in with a password (argon2id) and, when enrolled, a TOTP
    code. A login makes a session: an `api_tokens` row with the user's id and role."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # A role of sendense.hub.auth.roles.Role.
    role: Mapped[str] = mapped_column(String(16))
    # The argon2id hash in its PHC form ($argon2id$v=19$m=...,t=...,p=...$salt$hash).
    password_hash: Mapped[str] = mapped_column(String(255))
    # The TOTP secret sealed with secret.key (hub.auth.secrets); None: no second factor.
    totp_sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The last TOTP time step accepted: a code is taken once, never replayed.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    password_changed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class AuditEntry(Base):
    """One state-changing API call, refused ones too. Append-only: no route changes
    or deletes a row, and a database trigger refuses UPDATE and DELETE."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    token_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    method: Mapped[str] = mapped_column(String(8))
    action: Mapped[str] = mapped_column(String(255))
    target: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))


class Policy(Base):
    """Retention rules (Proxmox Backup Server style), a maximum chain length and a
    cron schedule, assigned to VMs by name, name pattern or vCenter folder."""

    __tablename__ = "policies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    keep_last: Mapped[int] = mapped_column(Integer, default=0)
    keep_hourly: Mapped[int] = mapped_column(Integer, default=0)
    keep_daily: Mapped[int] = mapped_column(Integer, default=0)
    keep_weekly: Mapped[int] = mapped_column(Integer, default=0)
    keep_monthly: Mapped[int] = mapped_column(Integer, default=0)
    keep_yearly: Mapped[int] = mapped_column(Integer, default=0)
    max_chain_length: Mapped[int | None] = mapped_column(Integer)
    schedule: Mapped[str | None] = mapped_column(String(128))
    last_run_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    assignments: Mapped[list[PolicyAssignment]] = relationship(
        back_populates="policy", cascade="all, delete-orphan"
    )


class PolicyAssignment(Base):
    __tablename__ = "policy_assignments"
    __table_args__ = (UniqueConstraint("kind", "value", name="uq_policy_assignments_kind_value"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    policy_id: Mapped[str] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # vm | pattern | folder
    value: Mapped[str] = mapped_column(String(255))

    policy: Mapped[Policy] = relationship(back_populates="assignments")


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


class NotifyTarget(Base):
    """Where notifications go: an SMTP server (`config`: host, port, security,
    username, sender, recipients) or a webhook (`config`: url). `secret_sealed`:
    the SMTP password or the webhook's HMAC key, sealed with secret.key."""

    __tablename__ = "notify_targets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # smtp | webhook
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secret_sealed: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The last delivery that failed (never with the secret): a warning the API shows.
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Storm control: single messages sent since `window_start` (one window long).
    window_start: Mapped[datetime | None] = mapped_column(UtcDateTime())
    window_count: Mapped[int] = mapped_column(Integer, default=0)
    # The hub delivering to it now (hubs sharing one database never both send).
    lease_owner: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


class NotifyRule(Base):
    """Which events go to a target: event names, a VM name pattern, task kinds,
    and the thresholds of the condition events."""

    __tablename__ = "notify_rules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("notify_targets.id", ondelete="CASCADE"))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    vm_pattern: Mapped[str] = mapped_column(String(255), default="*")
    kinds: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: every kind
    free_below_percent: Mapped[float | None] = mapped_column(Float)
    node_down_minutes: Mapped[float | None] = mapped_column(Float)
    max_age_hours: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class NotifyOutbox(Base):
    """An event matched to a target and not delivered yet: written in the same
    transaction that marks the event handled, deleted once sent."""

    __tablename__ = "notify_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("notify_targets.id", ondelete="CASCADE"))
    event: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class NotifyMark(Base):
    """What the notifier has handled, so a restart neither loses nor repeats it:
    `job:<id>` per finished task, `<rule>:<condition>` per condition event,
    `report:<rule>:<date>` per daily report, and `cursor` (the finish time up
    to which tasks were read, in `at`)."""

    __tablename__ = "notify_marks"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
