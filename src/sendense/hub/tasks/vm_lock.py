"""One task per VM at a time: the VM row's `active_job_id`, set by a conditional
UPDATE (atomic on SQLite and PostgreSQL), cleared when the task ends and by
start-up reconciliation after a crash."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from sendense.common.errors import VmBusy
from sendense.hub.db.models import Vm


def lock_vm(s: Session, vm: Vm, task_id: str) -> None:
    """Hold `vm` for `task_id`, or raise VmBusy naming the task that holds it."""
    result = s.execute(
        update(Vm).where(Vm.id == vm.id, Vm.active_job_id.is_(None)).values(active_job_id=task_id)
    )
    if getattr(result, "rowcount", 0) != 1:
        s.refresh(vm)
        raise VmBusy(
            vm.name, vm.active_job_id, f"VM {vm.name!r} has a job running: {vm.active_job_id}"
        )


def unlock_vm(s: Session, task_id: str) -> None:
    s.execute(update(Vm).where(Vm.active_job_id == task_id).values(active_job_id=None))


def move_lock(s: Session, task_id: str, old: Vm, new: Vm) -> None:
    """Hand `task_id`'s lock from `old` to `new` in the session's transaction (both
    or neither): VmBusy, and `old` still held, when another task holds `new`."""
    lock_vm(s, new, task_id)
    s.execute(
        update(Vm)
        .where(Vm.id == old.id, Vm.active_job_id == task_id)
        .values(active_job_id=None)
        .execution_options(synchronize_session="fetch")
    )
