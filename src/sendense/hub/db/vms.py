"""Finding a VM row by what an operator types: its id, or its name.

Names are not unique (the same name on two vCenters, a VM deleted and re-created
under its name): a name means the row backed up most recently, and an id always
means exactly one row."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sendense.hub.db.models import Job, Vm


def find_vm(s: Session, ref: str) -> Vm | None:
    """The VM with id `ref`, else the one named `ref` whose last task is the newest
    (a row without tasks counts from its creation)."""
    vm = s.get(Vm, ref)
    if vm is not None:
        return vm
    last = select(func.max(Job.created_at)).where(Job.vm_id == Vm.id).scalar_subquery()
    return s.scalars(
        select(Vm)
        .where(Vm.name == ref)
        .order_by(func.coalesce(last, Vm.created_at).desc(), Vm.created_at.desc(), Vm.id)
        .limit(1)
    ).first()
