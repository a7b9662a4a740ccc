"""The hub <-> node wire contract (node API on 8081). Field names of
`BackupStartRequest` are the seed's; do not rename them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from sendense.common.errors import InvalidInput
from sendense.common.targets import parse_targets

BackupType = Literal["full", "incremental"]
JobStateName = Literal["queued", "running", "complete", "failed", "cancelled"]


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


class BackupStartRequest(VcenterLogin):
    job_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    vm_name: str = Field(min_length=1, max_length=255)
    nbd_targets: str = Field(min_length=1, max_length=20000)
    backup_type: BackupType = "full"
    previous_change_ids: dict[str, str] = Field(default_factory=dict)

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


class BackupStartResponse(BaseModel):
    job_id: str
    status: str


class DiskProgress(BaseModel):
    disk_key: int
    backup_type: BackupType
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


class NodeJobStatus(BaseModel):
    job_id: str
    vm_name: str
    state: JobStateName
    error: str | None = None
    snapshot: str | None = None
    warnings: list[str] = Field(default_factory=list)
    started_at: float
    finished_at: float | None = None
    disks: list[DiskProgress] = Field(default_factory=list)


class DiskInventory(BaseModel):
    key: int
    label: str
    controller_key: int
    unit_number: int | None
    capacity_bytes: int
    datastore_path: str
    change_id: str | None = None


class VmInventory(BaseModel):
    name: str
    uuid: str | None
    path: str
    power_state: str
    cbt_enabled: bool
    tools_running: bool
    disks: list[DiskInventory]


class DiscoverResponse(BaseModel):
    vms: list[VmInventory]


class EnrollRequest(BaseModel):
    """A node asks to join a hub with a pairing code."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=4, max_length=64)
    node_name: str = Field(min_length=1, max_length=64)
    public_key: str = Field(min_length=16, max_length=8192, description="OpenSSH public key")
    node_api_token: SecretStr = Field(description="token the hub uses to call the node's API")


class EnrollResponse(BaseModel):
    node_id: str
    node_name: str
    key_fingerprint: str
    hub_host_key: str = Field(description="the tunnel server's public host key, to pin")
    hub_host_key_fingerprint: str
    tunnel_port: int
    tunnel_user: str
    reverse_port: int
    nbd_port_min: int
    nbd_port_max: int
    api_port: int
