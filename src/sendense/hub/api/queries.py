"""Read side of the hub's database, as the schemas the API and CLI show."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from sendense.common.errors import NotFound
from sendense.hub.api.schemas import JobOut, RestorePointOut, VmOut
from sendense.hub.db.database import Database
from sendense.hub.db.models import Job, RestorePoint, RestorePointDisk, Vcenter, Vm
from sendense.hub.db.vms import find_vm


class Queries:
    def __init__(self, db: Database) -> None:
        self.db = db

    def vms(self) -> list[VmOut]:
        with self.db.session() as s:
            rows = s.scalars(
                select(Vm).options(selectinload(Vm.disks)).order_by(Vm.name, Vm.created_at)
            ).all()
            return [_vm_out(s, r) for r in rows]

    def vm(self, ref: str) -> VmOut:
        """By id, or by name: the one backed up last when several VMs had that name."""
        with self.db.session() as s:
            row = find_vm(s, ref)
            if row is None:
                raise NotFound(f"VM {ref!r} is not known to the hub")
            return _vm_out(s, row)

    def restore_points(self, vm: str | None = None) -> list[RestorePointOut]:
        query = select(RestorePoint).options(selectinload(RestorePoint.disks))
        if vm is not None:
            query = query.where(RestorePoint.vm_id == self.vm(vm).id)
        with self.db.session() as s:
            rows = s.scalars(query.order_by(RestorePoint.created_at)).all()
            return _with_positions(s, [RestorePointOut.model_validate(r) for r in rows])

    def restore_point(self, point_id: str) -> RestorePointOut:
        with self.db.session() as s:
            row = s.get(RestorePoint, point_id, options=[selectinload(RestorePoint.disks)])
            if row is None:
                raise NotFound(f"restore point {point_id} does not exist")
            return _with_positions(s, [RestorePointOut.model_validate(row)])[0]

    def jobs(self, limit: int = 100) -> list[JobOut]:
        with self.db.session() as s:
            rows = s.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)).all()
            return [JobOut.model_validate(r) for r in rows]

    def jobs_of(self, vm_id: str, limit: int = 1000) -> list[JobOut]:
        """A VM's tasks, newest first."""
        with self.db.session() as s:
            rows = s.scalars(
                select(Job).where(Job.vm_id == vm_id).order_by(Job.created_at.desc()).limit(limit)
            ).all()
            return [JobOut.model_validate(r) for r in rows]

    def job(self, job_id: str) -> JobOut:
        with self.db.session() as s:
            row = s.get(Job, job_id)
            if row is None:
                raise NotFound(f"job {job_id} does not exist")
            return JobOut.model_validate(row)


def _vm_out(s: Session, vm: Vm) -> VmOut:
    out = VmOut.model_validate(vm)
    if vm.vcenter_id is not None:
        out.vcenter = s.scalar(select(Vcenter.host).where(Vcenter.id == vm.vcenter_id))
    return out


def _with_positions(s: Session, points: list[RestorePointOut]) -> list[RestorePointOut]:
    """Each disk's place in its chain: 1 for a full. A parent is looked up among
    the disks listed (a VM's points hold its whole chains), else read with the
    others of its generation: a query per generation, not one per layer."""
    parents = {d.id: d.parent_id for p in points for d in p.disks}
    wanted = {d.parent_id for p in points for d in p.disks if d.parent_id} - parents.keys()
    while wanted:
        found: dict[str, str | None] = {}
        batch = sorted(wanted)
        for start in range(0, len(batch), 500):
            part = batch[start : start + 500]
            for layer, parent in s.execute(
                select(RestorePointDisk.id, RestorePointDisk.parent_id).where(
                    RestorePointDisk.id.in_(part)
                )
            ):
                found[layer] = parent
        parents.update(found)
        parents.update(dict.fromkeys(wanted - found.keys()))  # gone: the chain ends there
        wanted = {x for x in found.values() if x} - parents.keys()
    for disk in (d for p in points for d in p.disks):
        position, parent = 1, disk.parent_id
        while parent is not None:
            position += 1
            parent = parents.get(parent)
        disk.chain_position = position
    return points
