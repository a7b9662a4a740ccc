"""Shapes the hub shows to the outside (API responses, CLI tables) and accepts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from sendense.common.time_split import JobTimeSplit


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class CapacityOut(Out):
    total: int
    used: int
    free: int


class RepositoryOut(Out):
    id: str
    name: str
    path: str
    capacity: CapacityOut
    backup_bytes: int = 0
    prunable_bytes: int = 0
    # What the backups running on it may still write (counted against free space
    # for the next backup: repositories.py `promised`).
    promised_bytes: int = 0


class RepositoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=4096)
    name: str | None = Field(default=None, max_length=64)


class PortAllocationOut(Out):
    port: int
    owner: str
    job_id: str | None
    disk_key: int | None


class PortPoolOut(Out):
    first: int
    last: int
    total: int
    used: int
    free: int
    allocations: list[PortAllocationOut]


class ExportOut(Out):
    id: str
    job_id: str
    disk_key: int
    port: int
    export_name: str
    file_path: str
    pid: int | None
    alive: bool


class VmDiskOut(Out):
    disk_key: int
    label: str | None
    capacity_bytes: int
    datastore_path: str | None
    removed: bool


class VmOut(Out):
    id: str
    name: str
    vmware_uuid: str | None
    # The vCenter it is on (its host as registered); None when not known.
    vcenter_id: str | None = None
    vcenter: str | None = None
    active_job_id: str | None
    disks: list[VmDiskOut]


class RestorePointDiskOut(Out):
    id: str
    disk_key: int
    parent_id: str | None
    file_path: str
    backup_type: str
    # Why a disk planned as an incremental was read whole (it keeps its parent).
    full_reason: str | None = None
    virtual_size: int
    data_bytes: int | None
    file_size: int | None
    change_id: str | None
    checksum: str | None
    duration_s: float | None
    rate_bytes_per_s: float | None
    status: str
    verified_at: datetime | None
    verify_error: str | None
    # 1 for a full, 2 for the first incremental on it, ...
    chain_position: int = 1


class RestorePointOut(Out):
    id: str
    vm_id: str
    job_id: str
    repository_id: str
    status: str
    created_at: datetime
    completed_at: datetime | None
    verified_at: datetime | None
    verify_error: str | None
    protected: bool = False
    disks: list[RestorePointDiskOut]


class JobOut(Out):
    id: str
    vm_id: str | None  # None: a task of no VM (a schedule run)
    kind: str
    backup_type: str | None
    state: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # A finished backup's: where the copy waited, the source or the target.
    time_split: JobTimeSplit | None = None


MAX_DISK_BYTES = 64 << 40
DiskOffset = Annotated[int, Field(ge=0, le=MAX_DISK_BYTES)]
DiskLength = Annotated[int, Field(gt=0, le=MAX_DISK_BYTES)]


class DiskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: int = Field(ge=0, le=999999, description="VirtualDisk.key, e.g. 2000")
    capacity_bytes: int = Field(gt=0, le=MAX_DISK_BYTES, description="at most 64 TiB (VMware: 62)")
    label: str | None = Field(default=None, max_length=255)
    datastore_path: str | None = Field(default=None, max_length=4096)
    estimated_bytes: int = Field(default=0, ge=0, le=MAX_DISK_BYTES)


class JobCreateIn(BaseModel):
    """Open write exports for a VM's disks (the hub's half of a backup)."""

    model_config = ConfigDict(extra="forbid")
    vm_name: str = Field(min_length=1, max_length=255)
    disks: list[DiskIn] = Field(min_length=1, max_length=64)
    backup_type: str = "auto"
    repository: str | None = None
    # What identifies the VM when the caller knows it: the registered vCenter's
    # host and the VM's instance UUID. Without them the VM is known by its name.
    vcenter: str | None = Field(default=None, min_length=1, max_length=255)
    vm_uuid: str | None = Field(default=None, min_length=1, max_length=64)


class TargetOut(Out):
    disk_key: int
    backup_type: str
    port: int
    export_name: str
    uri: str


class JobCreatedOut(Out):
    job_id: str
    restore_point_id: str
    nbd_targets: str
    targets: list[TargetOut]


class DiskResultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    change_id: str | None = Field(default=None, max_length=1024)
    # Bounded (as every integer the database stores): past 64 bits it was a 500.
    data_bytes: int | None = Field(default=None, ge=0, le=MAX_DISK_BYTES)
    checksum: str | None = Field(default=None, max_length=256)
    duration_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    rate_bytes_per_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    areas: list[tuple[DiskOffset, DiskLength]] | None = None
    checksum_block: int | None = Field(default=None, gt=0, le=1 << 30)
    # Set when the disk was read whole instead of as an incremental, and why.
    full_reason: str | None = Field(default=None, max_length=4096)


class JobFinishIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    success: bool
    error: str | None = Field(default=None, max_length=4096)
    disks: dict[int, DiskResultIn] = Field(default_factory=dict)


class DiskAccessOut(BaseModel):
    disk_key: int
    port: int
    export_name: str
    # nbds://IDENTITY@HOST:PORT/EXPORT (add ?tls-psk-file=FILE) for an instant
    # access; nbd://HOST:PORT/EXPORT for a restore's (the node reads it).
    uri: str
    # qemu's --image-opts, with credentials object `tls0` (TLS accesses only).
    image_opts: str | None = None


class AccessOut(BaseModel):
    id: str
    restore_point_id: str
    purpose: str
    started_at: datetime | None
    disks: list[DiskAccessOut]
    # The TLS pre-shared key's identity (null: plain NBD, a restore's access).
    psk_identity: str | None = None


class AccessOpenedOut(AccessOut):
    """The answer that opens an access: the only one that carries its key."""

    psk: str


class VerifyProgressOut(BaseModel):
    bytes_total: int
    bytes_done: int
    layers_total: int
    layers_done: int
