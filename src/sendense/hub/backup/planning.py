"""What a new backup writes, decided in `prepare`'s transaction: the VM's disks
recorded (a disk no longer there ends its chain), and per disk a new layer, a full
or an incremental on the newest usable layer of the same disk (DiskPlan)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from sendense.hub.backup.disks import DiskSpec
from sendense.hub.db.models import PointStatus, RestorePoint, RestorePointDisk, Vm, VmDisk, new_id
from sendense.hub.repository.repositories import RepositoryService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiskPlan:
    key: int
    file_path: str
    parent_file: str | None
    backup_type: str
    parent_id: str | None
    capacity: int
    estimated_bytes: int


def upsert_disks(s: Session, vm: Vm, disks: list[DiskSpec]) -> None:
    known = {d.disk_key: d for d in s.scalars(select(VmDisk).where(VmDisk.vm_id == vm.id))}
    for spec in disks:
        row = known.get(spec.key) or VmDisk(vm_id=vm.id, disk_key=spec.key)
        row.capacity_bytes = spec.capacity_bytes
        row.label = spec.label
        row.datastore_path = spec.datastore_path
        row.removed = False
        s.add(row)
    wanted = {spec.key for spec in disks}
    for key, row in known.items():
        if key not in wanted:
            row.removed = True  # a removed disk ends its chain


def plan_disk(
    s: Session,
    vm: Vm,
    point: RestorePoint,
    spec: DiskSpec,
    backup_type: str,
    repo_id: str,
    max_chain: int | None = None,
) -> DiskPlan:
    parent = None
    if backup_type != "full":
        # The newest point of this disk, complete or found invalid by a
        # verification: an invalid one is never a parent, the disk gets a full.
        parent = s.scalars(
            select(RestorePointDisk)
            .join(RestorePoint)
            .where(
                RestorePoint.vm_id == vm.id,
                # the backing file is named relative to the overlay: same repository
                RestorePoint.repository_id == repo_id,
                RestorePointDisk.disk_key == spec.key,
                RestorePointDisk.status.in_([PointStatus.COMPLETE, PointStatus.INVALID]),
            )
            .order_by(RestorePoint.completed_at.desc())
        ).first()
        if parent is not None and parent.status == PointStatus.INVALID:
            log.warning(
                "disk %d: its last restore point failed verification: full backup", spec.key
            )
            parent = None
        elif parent is not None and parent.change_id is None:
            parent = None
        elif parent is not None and max_chain and _chain_length(s, parent) >= max_chain:
            log.info(
                "disk %d: its chain holds %d files, the policy's maximum: full backup",
                spec.key,
                max_chain,
            )
            parent = None
    if backup_type == "incremental" and parent is None:
        log.info("disk %d has no complete parent with a change id: full backup", spec.key)
    disk_id = new_id()
    estimated = (parent.file_size or spec.estimated_bytes) if parent else spec.estimated_bytes
    row = RestorePointDisk(
        id=disk_id,
        restore_point_id=point.id,
        disk_key=spec.key,
        parent_id=parent.id if parent else None,
        backup_type="incremental" if parent else "full",
        virtual_size=spec.capacity_bytes,
        file_path=RepositoryService.disk_file(vm.id, spec.key, disk_id),
        # Counted against the repository for other backups: a full's estimate
        # (its extents on the datastore); an incremental's only once the node
        # has its exact plan (ledger.planned): its first bound, the parent's
        # whole file, summed over a night of incrementals would refuse most.
        reserved_bytes=None if parent else estimated,
    )
    s.add(row)
    s.flush()
    return DiskPlan(
        spec.key,
        row.file_path,
        parent.file_path if parent else None,
        row.backup_type,
        parent.id if parent else None,
        spec.capacity_bytes,
        estimated,
    )


def _chain_length(s: Session, layer: RestorePointDisk) -> int:
    """How many files a chain ending in `layer` holds (the full counts), following
    parent_id: a layer read whole after a change ID was refused counts as one more."""
    length = 1
    while layer.parent_id is not None:
        parent = s.get(RestorePointDisk, layer.parent_id)
        if parent is None:
            break
        layer, length = parent, length + 1
    return length
