"""The hub <-> node wire contract (node API on 8081). Field names of
`BackupStartRequest` are the seed's; do not rename them."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from sendense.common.errors import InvalidInput
from sendense.common.targets import parse_targets
from sendense.common.time_split import Phase, TimeSplit

BackupType = Literal["full", "incremental"]
JobStateName = Literal["queued", "running", "complete", "failed", "cancelled"]
# A task on either side is one of these until it ends in one of those.
ACTIVE_STATES: tuple[JobStateName, ...] = ("queued", "running")
TERMINAL_STATES: tuple[str, ...] = ("complete", "failed", "cancelled")


class VcenterLogin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vcenter_host: str = Field(min_length=1, max_length=255, description="host or host:port")
    vcenter_user: str = Field(min_length=1, max_length=255)
    vcenter_password: SecretStr
    vcenter_thumbprint: str | None = Field(
        default=None, max_length=200, description="SHA-256 of the vCenter certificate (pins TLS)"
    )


class InventoryRequest(VcenterLogin):
    vm_name: str = Field(min_length=1, max_length=255)


def new_job_id() -> str:
    return uuid.uuid4().hex


class BackupStartRequest(VcenterLogin):
    # The seed's body has no job_id: the node then makes one and returns it. The hub
    # always sends its task's id, so a repeated start finds the job it started.
    job_id: str = Field(
        default_factory=new_job_id, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$"
    )
    vm_name: str = Field(min_length=1, max_length=255)
    # The instance UUID the hub planned for: a VM that is not that one (re-created
    # under its name since the hub looked) is refused, never written into that chain.
    vm_uuid: str | None = Field(default=None, min_length=1, max_length=64)
    nbd_targets: str = Field(min_length=1, max_length=20000)
    backup_type: BackupType = "full"
    previous_change_ids: dict[str, str] = Field(default_factory=dict)
    # The bytes the hub's repository can still take for this job (free space less
    # its reserve). The node fails the job before copying when its plan needs more.
    # None (the seed's body): no check.
    space_budget_bytes: int | None = Field(default=None, ge=0)

    @field_validator("nbd_targets")
    @classmethod
    def _targets(cls, value: str) -> str:
        try:
            parse_targets(value)
        except InvalidInput as exc:  # pydantic turns only ValueError into a 422
            raise ValueError(exc.message) from None
        return value

    @field_validator("previous_change_ids")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key.isdigit():
                raise ValueError(f"previous_change_ids key {key!r} is not a disk key")
        return value


class SnapshotHuntResponse(BaseModel):
    """After the hub's periodic `POST /snapshots/hunt`: dead jobs' snapshots still
    recorded for that vCenter, and why those could not be removed."""

    pending: int
    warnings: list[str] = Field(default_factory=list)


class BackupStartResponse(BaseModel):
    job_id: str
    status: str


class DiskProgress(BaseModel):
    disk_key: int
    backup_type: BackupType
    # What the node does with the disk while its task runs (common/time_split.py);
    # after, the last phase it reached.
    phase: Phase = "planning"
    full_reason: str | None = None
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    zero_bytes: int = 0
    rate_bytes_per_s: float = 0.0
    eta_seconds: float | None = None
    seconds: float = 0.0
    change_id: str | None = None
    checksum: str | None = None
    # Set when the disk is done: the areas read and the checksum's block size,
    # so the hub can recompute the checksum from the restore point later.
    checksum_block: int | None = None
    areas: list[tuple[int, int]] | None = None
    # Where the copy waited so far: the source, the target (common/time_split.py).
    time_split: TimeSplit = Field(default_factory=TimeSplit)


class TaskLogLine(BaseModel):
    """One log record of a node's task, numbered from 1 in the task: the hub keeps
    the lines numbered after the last it has (the node keeps only the latest)."""

    seq: int
    at: float = Field(description="epoch seconds")
    level: str
    message: str


class TaskStatus(BaseModel):
    """What the node says of any of its tasks (a backup, a restore)."""

    job_id: str
    vm_name: str
    state: JobStateName
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)
    started_at: float
    finished_at: float | None = None
    # The task's latest log lines (secrets redacted), oldest first.
    log: list[TaskLogLine] = Field(default_factory=list)


class NodeJobStatus(TaskStatus):
    # The task's phase: "snapshot" until there are disks, then as they go.
    phase: Phase | None = None
    snapshot: str | None = None
    disks: list[DiskProgress] = Field(default_factory=list)


class DiskInventory(BaseModel):
    key: int
    label: str
    controller_key: int
    unit_number: int | None
    capacity_bytes: int
    datastore_path: str
    change_id: str | None = None
    thin_provisioned: bool | None = None
    # What the disk holds on its datastore (vSphere's layoutEx extent sizes; all of
    # it for a thick disk): the hub's first estimate of a full's size.
    allocated_bytes: int | None = None


class ControllerInventory(BaseModel):
    """A storage controller a disk hangs on."""

    key: int
    type: str = Field(
        description="vSphere class: ParaVirtualSCSIController, VirtualAHCIController..."
    )
    bus_number: int
    shared_bus: str | None = Field(default=None, description="SCSI bus sharing")


class VmInventory(BaseModel):
    name: str
    uuid: str | None
    path: str
    power_state: str
    cbt_enabled: bool
    tools_running: bool
    disks: list[DiskInventory]
    # Older nodes send none of these: defaults keep their answers valid.
    controllers: list[ControllerInventory] = Field(default_factory=list)
    guest_id: str | None = None
    num_cpus: int | None = None
    memory_mb: int | None = None
    firmware: str | None = None

    def layout(self) -> VmLayout | None:
        """The VM's shape as a restore needs it, its disks and their controllers;
        None when the inventory does not describe a VM that can be rebuilt."""
        used = {d.controller_key for d in self.disks}
        disks = [
            DiskLayout(
                key=d.key,
                label=d.label,
                controller_key=d.controller_key,
                unit_number=d.unit_number,
                capacity_bytes=d.capacity_bytes,
                thin_provisioned=d.thin_provisioned is not False,
                datastore_path=d.datastore_path,
            )
            for d in self.disks
        ]
        try:
            return VmLayout(
                guest_id=self.guest_id,
                num_cpus=self.num_cpus,
                memory_mb=self.memory_mb,
                firmware=self.firmware,
                controllers=[c for c in self.controllers if c.key in used],
                disks=disks,
            )
        except ValidationError:
            return None


class DiskLayout(BaseModel):
    key: int = Field(ge=0)
    label: str | None = None
    controller_key: int
    unit_number: int | None = Field(default=None, ge=0)
    capacity_bytes: int = Field(gt=0)
    thin_provisioned: bool = True
    datastore_path: str | None = None


class VmLayout(BaseModel):
    """What a restore rebuilds a VM from: recorded with each restore point."""

    guest_id: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    memory_mb: int | None = Field(default=None, ge=1)
    firmware: str | None = None
    controllers: list[ControllerInventory] = Field(default_factory=list)
    disks: list[DiskLayout] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> VmLayout:
        keys = [d.key for d in self.disks]
        if len(set(keys)) != len(keys):
            raise ValueError("a disk key appears twice in the layout")
        places = [
            (d.controller_key, d.unit_number) for d in self.disks if d.unit_number is not None
        ]
        if len(set(places)) != len(places):
            raise ValueError("two disks of the layout share a controller unit")
        return self


class DiscoverResponse(BaseModel):
    vms: list[VmInventory]


class EnrollRequest(BaseModel):
    """A node asks to join a hub with a pairing code."""

    model_config = ConfigDict(extra="forbid")
    # Bounded so that the largest valid request fits the cap on unauthenticated
    # bodies (sendense.common.body_limit.PUBLIC_BODY_BYTES) even JSON-escaped.
    code: str = Field(min_length=4, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    node_name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    public_key: str = Field(
        min_length=16,
        max_length=4096,
        pattern=r"^[ !#-\[\]-~]+$",
        description="OpenSSH public key (printable ASCII, no quote or backslash)",
    )
    node_api_token: SecretStr = Field(
        max_length=128, description="token the hub uses to call the node's API"
    )
    signature: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[A-Za-z0-9+/=]+$",
        description="base64 ed25519 signature by the node's key of the enrollment challenge "
        "(sendense.common.sshkeys.enrollment_challenge); required",
    )


class EnrollResponse(BaseModel):
    node_id: str
    node_name: str
    key_fingerprint: str
    hub_host_key: str = Field(description="the tunnel server's public host key, to pin")
    hub_host_key_fingerprint: str
    tunnel_port: int
    tunnel_user: str = Field(description="the node's own system user on the hub")
    reverse_port: int
    nbd_port_min: int
    nbd_port_max: int
    api_port: int


def new_vm_name(value: str) -> str:
    """A name for a VM to create: vSphere escapes '/', '\\' and '%' in names, and
    blanks at either end are a typo."""
    if value != value.strip() or any(c in value for c in "/\\%") or not value.isprintable():
        raise ValueError("a VM name has no leading or trailing blanks, '/', '\\' or '%'")
    return value


class RestoreCheckRequest(VcenterLogin):
    """A whole VM back to vCenter: where, and what it looks like."""

    vm_name: str = Field(min_length=1, max_length=80, description="the VM to create")
    datastore: str | None = Field(
        default=None, max_length=255, description="default: the first disk's original one"
    )
    folder: str | None = Field(
        default=None, max_length=1024, description="VM folder: inventory path or one under vm/"
    )
    force: bool = Field(default=False, description="replace a powered-off VM of that name")
    power_on: bool = False
    layout: VmLayout

    @field_validator("vm_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return new_vm_name(value)


class RestoreCheckResponse(BaseModel):
    vm_name: str
    datacenter: str
    datastore: str
    folder: str
    replaces: bool = Field(description="an existing powered-off VM of that name is replaced")
    bytes_needed: int
    bytes_free: int


class RestoreStartRequest(RestoreCheckRequest):
    job_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    nbd_targets: str = Field(min_length=1, max_length=20000, description="disk key -> source")

    @model_validator(mode="after")
    def _targets(self) -> RestoreStartRequest:
        try:
            keys = {t.disk_key for t in parse_targets(self.nbd_targets)}
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        wanted = {d.key for d in self.layout.disks}
        if keys != wanted:
            raise ValueError(
                f"nbd_targets name disks {sorted(keys)}, the layout has {sorted(wanted)}"
            )
        return self


class RestoreDiskProgress(BaseModel):
    disk_key: int
    datastore_path: str | None = None
    bytes_total: int = 0
    bytes_done: int = 0
    rate_bytes_per_s: float = 0.0
    eta_seconds: float | None = None
    seconds: float = 0.0


class RestoreJobStatus(TaskStatus):
    replaced: bool = False
    vm_path: str | None = None
    powered_on: bool = False
    disks: list[RestoreDiskProgress] = Field(default_factory=list)
