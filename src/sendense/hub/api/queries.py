"""Read side of the hub's database, as the schemas the API and CLI show."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from sendense.common.errors import NotFound
from sendense.hub.api.schemas import JobOut, RestorePointOut, VmOut
from sendense.hub.db.database import Database
from sendense.hub.db.models import Job, RestorePoint, RestorePointDisk, Vm


class Queries:
    def __init__(self, db: Database) -> None:
        self.db = db

    def vms(self) -> list[VmOut]:
        with self.db.session() as s:
            rows = s.scalars(select(Vm).options(selectinload(Vm.disks)).order_by(Vm.name)).all()
            return [VmOut.model_validate(r) for r in rows]

    def vm(self, ref: str) -> VmOut:
        with self.db.session() as s:
            row = s.scalars(
                select(Vm).options(selectinload(Vm.disks)).where((Vm.id == ref) | (Vm.name == ref))
            ).first()
            if row is None:
                raise NotFound(f"VM {ref!r} is not known to the hub")
            return VmOut.model_validate(row)

    def restore_points(self, vm: str | None = None) -> list[RestorePointOut]:
        query = select(RestorePoint).options(selectinload(RestorePoint.disks))
        if vm is not None:
            query = query.where(RestorePoint.vm_id == self.vm(vm).id)
        with self.db.session() as s:
            rows = s.scalars(query.order_by(RestorePoint.created_at)).all()
            return [_with_positions(s, RestorePointOut.model_validate(r)) for r in rows]

    def restore_point(self, point_id: str) -> RestorePointOut:
        with self.db.session() as s:
            row = s.get(RestorePoint, point_id, options=[selectinload(RestorePoint.disks)])
            if row is None:
                raise NotFound(f"restore point {point_id} does not exist")
            return _with_positions(s, RestorePointOut.model_validate(row))

    def jobs(self, limit: int = 100) -> list[JobOut]:
        with self.db.session() as s:
            rows = s.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)).all()
            return [JobOut.model_validate(r) for r in rows]

    def job(self, job_id: str) -> JobOut:
        with self.db.session() as s:
            row = s.get(Job, job_id)
            if row is None:
                raise NotFound(f"job {job_id} does not exist")
            return JobOut.model_validate(row)


def _with_positions(s: Session, point: RestorePointOut) -> RestorePointOut:
    """Each disk's place in its chain: 1 for a full."""
    for disk in point.disks:
        position, parent = 1, disk.parent_id
        while parent is not None:
            position += 1
            parent = s.scalar(
                select(RestorePointDisk.parent_id).where(RestorePointDisk.id == parent)
            )
        disk.chain_position = position
    return point
