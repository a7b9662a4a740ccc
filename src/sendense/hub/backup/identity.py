"""Which VM row, and so which chain, a backup writes to.

A VM is (vCenter, instance UUID). Its name is only what it is called now: a VM
deleted and re-created under its name gets a new row (a new chain, a full); one
renamed keeps its row (its chain goes on); two VMs of one name on two vCenters
are two rows.

An orchestrated backup knows the name before the UUID: `reserve` locks the row
known under that name on that vCenter (or a new one), and `identify`, once the
node's inventory gives the UUID, records it or hands the task and its lock over
to the right row in one transaction. A backup prepared from outside (POST
/api/v1/jobs) gives what it knows: a name, and maybe a vCenter and a UUID.
"""

from __future__ import annotations

import logging
from typing import overload

from sqlalchemy import case, exists, func, or_, select
from sqlalchemy.orm import Session

from sendense.common.errors import InvalidInput, NotFound
from sendense.hub.db.models import Job, RestorePoint, Vcenter, Vm
from sendense.hub.tasks.vm_lock import move_lock

log = logging.getLogger(__name__)
MAX_UUID = 64


@overload
def vcenter_id(s: Session, host: str) -> str: ...
@overload
def vcenter_id(s: Session, host: None) -> None: ...
@overload
def vcenter_id(s: Session, host: str | None) -> str | None: ...
def vcenter_id(s: Session, host: str | None) -> str | None:
    """The id of the vCenter registered as `host` (None for None)."""
    if host is None:
        return None
    found = s.scalars(select(Vcenter.id).where(Vcenter.host == host)).first()
    if found is None:
        raise NotFound(f"no vCenter {host!r} is registered")
    return found


def _check_uuid(uuid: str | None) -> None:
    if uuid is not None and not 0 < len(uuid) <= MAX_UUID:
        raise InvalidInput(f"a VM UUID has 1 to {MAX_UUID} characters")


def _by_uuid(s: Session, vc_id: str | None, uuid: str) -> Vm | None:
    """The row of this VM: on this vCenter, or, without one, on any (a row without
    a vCenter first)."""
    query = select(Vm).where(Vm.vmware_uuid == uuid)
    if vc_id is not None:
        query = query.where(Vm.vcenter_id == vc_id)
    else:
        query = query.order_by(case((Vm.vcenter_id.is_(None), 0), else_=1), Vm.created_at.desc())
    return s.scalars(query.limit(1)).first()


def _named(s: Session, name: str, vc_id: str | None, unknown_uuid: bool) -> Vm | None:
    """The row known under `name` on this vCenter, else one under that name whose
    vCenter is not known (made before 0011, or from outside): the one backed up
    last. Without a vCenter, any row of that name (one without a vCenter first)."""
    last = select(func.max(Job.created_at)).where(Job.vm_id == Vm.id).scalar_subquery()
    query = select(Vm).where(Vm.name == name)
    if vc_id is not None:
        query = query.where(or_(Vm.vcenter_id == vc_id, Vm.vcenter_id.is_(None))).order_by(
            case((Vm.vcenter_id == vc_id, 0), else_=1)
        )
    else:
        query = query.order_by(case((Vm.vcenter_id.is_(None), 0), else_=1))
    if unknown_uuid:
        query = query.where(Vm.vmware_uuid.is_(None))
    query = query.order_by(func.coalesce(last, Vm.created_at).desc(), Vm.id)
    return s.scalars(query.limit(1)).first()


def _claim(vm: Vm, name: str, vc_id: str | None, uuid: str | None) -> Vm:
    if vm.name != name:
        log.info("VM %s renamed %r -> %r: its chain goes on", vm.id, vm.name, name)
        vm.name = name
    if vc_id is not None and vm.vcenter_id is None:
        vm.vcenter_id = vc_id
    if uuid is not None and vm.vmware_uuid is None:
        vm.vmware_uuid = uuid
    return vm


def resolve(s: Session, name: str, vc_id: str | None, uuid: str | None) -> Vm:
    """The row for the VM `name` (vCenter and UUID when known), made if there is
    none: by UUID first (renamed or not), else by name among the rows whose UUID
    is not known yet."""
    _check_uuid(uuid)
    found = _by_uuid(s, vc_id, uuid) if uuid else None
    if found is None:
        found = _named(s, name, vc_id, unknown_uuid=uuid is not None)
    if found is None:
        found = Vm(name=name, vcenter_id=vc_id, vmware_uuid=uuid)
        s.add(found)
    _claim(found, name, vc_id, uuid)
    s.flush()
    return found


def identify(s: Session, task_id: str, name: str, vc_id: str, uuid: str) -> Vm:
    """Once the inventory gives the VM's UUID: the row of the VM `task_id` backs up.

    The row `reserve` locked is it when its UUID is this one or not known yet (no
    other row has this one). Otherwise (the VM was deleted and re-created under its
    name, or renamed from a VM known under another name) the task and its lock move
    to the row of this UUID, made if there is none (a new chain); the old row keeps
    its restore points. A row `reserve` made that ends up unused is removed."""
    _check_uuid(uuid)
    job = s.get_one(Job, task_id)
    current = s.get_one(Vm, job.vm_id)
    target = _by_uuid(s, vc_id, uuid)
    if target is None and current.vmware_uuid is None and current.vcenter_id in (None, vc_id):
        target = current
    if target is None:
        log.info("VM %r on this vCenter is a new VM (UUID %s): a new chain", name, uuid)
        target = Vm(name=name, vcenter_id=vc_id, vmware_uuid=uuid)
        s.add(target)
    _claim(target, name, vc_id, uuid)
    s.flush()
    if target.id != current.id:
        move_lock(s, task_id, current, target)
        job.vm_id = target.id
        s.flush()
        if _unused(s, current):
            s.delete(current)
            s.flush()
    return target


def _unused(s: Session, vm: Vm) -> bool:
    if vm.vmware_uuid is not None:
        return False
    used = s.scalar(
        select(exists().where(Job.vm_id == vm.id) | exists().where(RestorePoint.vm_id == vm.id))
    )
    return not used
