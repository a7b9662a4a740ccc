"""What a backup job's disks are to the ledger: what a caller asks to back up
(DiskSpec), what `prepare` opened for each (PreparedDisk, PreparedJob), what the
node reports once it wrote them (DiskResult), and the checks on what is asked and
reported before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field

from sendense.common.errors import InvalidInput
from sendense.common.names import validate_vm_name
from sendense.common.targets import NbdTarget, format_targets

BACKUP_TYPES = ("auto", "full", "incremental")


@dataclass(frozen=True)
class DiskSpec:
    key: int
    capacity_bytes: int
    label: str | None = None
    datastore_path: str | None = None
    estimated_bytes: int = 0


@dataclass(frozen=True)
class PreparedDisk:
    key: int
    backup_type: str
    file_path: str
    parent_id: str | None
    target: NbdTarget


@dataclass(frozen=True)
class PreparedJob:
    job_id: str
    vm_id: str
    restore_point_id: str
    disks: list[PreparedDisk] = field(default_factory=list)

    @property
    def nbd_targets(self) -> str:
        return format_targets([d.target for d in self.disks])


@dataclass(frozen=True)
class DiskResult:
    change_id: str | None = None
    data_bytes: int | None = None
    checksum: str | None = None
    duration_s: float | None = None
    rate_bytes_per_s: float | None = None
    # The areas read, in the checksum's blocks of `checksum_block` bytes.
    areas: list[tuple[int, int]] | None = None
    checksum_block: int | None = None
    # Set when the node read the whole disk (VMware refused the parent's change
    # ID, CBT was off): why. The layer is recorded as a full that keeps its parent.
    full_reason: str | None = None


def validate_job(vm_name: str, disks: list[DiskSpec], backup_type: str) -> None:
    validate_vm_name(vm_name)
    if backup_type not in BACKUP_TYPES:
        raise InvalidInput(f"backup type {backup_type!r}: use one of {', '.join(BACKUP_TYPES)}")
    if not disks:
        raise InvalidInput("a backup needs at least one disk")
    keys = [d.key for d in disks]
    if len(set(keys)) != len(keys):
        raise InvalidInput("a disk key appears twice")
    for d in disks:
        if d.key < 0 or d.capacity_bytes <= 0:
            raise InvalidInput(f"disk {d.key}: key must be >= 0 and capacity > 0")


def check_areas(disk_key: int, size: int, result: DiskResult) -> None:
    """Areas the node says it read lie on the disk: a result naming bytes past
    the disk's end describes some other disk, and its checksums would never verify."""
    for offset, length in result.areas or []:
        if offset < 0 or length < 0 or offset + length > size:
            raise InvalidInput(
                f"disk {disk_key}: the area at {offset} ({length} bytes) lies outside "
                f"the disk ({size} bytes)"
            )
