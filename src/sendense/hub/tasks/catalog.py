"""The hub's tasks as an operator sees them: listed with filters, one by id, and
cancelled.

A task is a `jobs` row. Cancelling moves an active backup or whole-VM restore to
`cancelled` with a guarded update; its runner sees the state between two polls of
the node, tells the node to stop (the node removes its snapshot) and cleans up
its own half (exports, ports, unfinished files) without touching the state.
A task that is finishing (its restore point being committed) or of another kind
(verify, prune, an instant access, which is closed instead) is refused with the
reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from sendense.common.errors import Conflict, NotFound
from sendense.hub.db.database import Database
from sendense.hub.db.models import Job, JobState, RestorePoint, TaskKind, Vm, utcnow

CANCELLABLE_KINDS = (TaskKind.BACKUP, TaskKind.RESTORE)
CANCELLABLE_STATES = (JobState.QUEUED, JobState.PREPARING, JobState.RUNNING)
CANCELLED_CODE = "cancelled"


@dataclass(frozen=True)
class TaskInfo:
    id: str
    kind: str
    state: str
    vm: str | None  # None: a task of no VM (a schedule run)
    vm_id: str | None
    backup_type: str | None
    started_by: str | None
    parent_id: str | None
    error: str | None
    error_code: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    time_split: dict[str, Any] | None


@dataclass(frozen=True)
class TaskFilter:
    kind: TaskKind | None = None
    state: JobState | None = None
    vm: str | None = None  # the VM's name
    since: datetime | None = None  # created at or after


@dataclass(frozen=True)
class TaskPage:
    items: list[TaskInfo]
    total: int
    offset: int
    limit: int


def _info(job: Job, vm_name: str | None) -> TaskInfo:
    return TaskInfo(
        id=job.id,
        kind=job.kind.value,
        state=job.state.value,
        vm=vm_name,
        vm_id=job.vm_id,
        backup_type=job.backup_type,
        started_by=job.started_by,
        parent_id=job.parent_id,
        error=job.error,
        error_code=job.error_code,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        time_split=job.time_split,
    )


class TaskCatalog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self, where: TaskFilter, offset: int = 0, limit: int = 50) -> TaskPage:
        """Newest first."""
        query = select(Job, Vm.name).outerjoin(Vm, Vm.id == Job.vm_id)
        if where.kind is not None:
            query = query.where(Job.kind == where.kind)
        if where.state is not None:
            query = query.where(Job.state == where.state)
        if where.vm is not None:
            query = query.where(Vm.name == where.vm)
        if where.since is not None:
            query = query.where(Job.created_at >= where.since)
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.execute(
                query.order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit)
            ).all()
            return TaskPage([_info(job, name) for job, name in rows], total, offset, limit)

    def get(self, task_id: str) -> TaskInfo:
        with self.db.session() as s:
            return self._get(s, task_id)

    @staticmethod
    def _get(s: Session, task_id: str) -> TaskInfo:
        row = s.execute(
            select(Job, Vm.name).outerjoin(Vm, Vm.id == Job.vm_id).where(Job.id == task_id)
        ).first()
        if row is None:
            raise NotFound(f"task {task_id} does not exist")
        return _info(row[0], row[1])

    def open_for_point(self, kind: TaskKind, point_id: str, started_by: str) -> str:
        """A running task about a restore point's VM (a download): its id."""
        with self.db.session() as s:
            vm_id = s.scalar(select(RestorePoint.vm_id).where(RestorePoint.id == point_id))
        if vm_id is None:
            raise NotFound(f"restore point {point_id} does not exist")
        return self.open(kind, vm_id, started_by, point_id)

    def open(
        self, kind: TaskKind, vm_id: str | None, started_by: str, point_id: str | None = None
    ) -> str:
        """A running task no runner runs (a download, a schedule's run): its id.
        `point_id`: the restore point it reads, which prune keeps while it runs."""
        with self.db.session() as s:
            task = Job(
                vm_id=vm_id,
                kind=kind,
                state=JobState.RUNNING,
                started_by=started_by[:128],
                started_at=utcnow(),
                restore_point_id=point_id,
            )
            s.add(task)
            s.flush()
            return task.id

    def close(self, task_id: str, error: str | None = None, code: str | None = None) -> None:
        """End a task `open` made: complete, or failed with `error` and `code`."""
        with self.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == task_id, Job.state == JobState.RUNNING)
                .values(
                    state=JobState.FAILED if error else JobState.COMPLETE,
                    error=error,
                    error_code=code if error else None,
                    finished_at=utcnow(),
                )
            )

    def attribute(self, task_id: str, started_by: str, parent_id: str | None = None) -> None:
        """Record who started the task (and the task that started it)."""
        with self.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == task_id)
                .values(started_by=started_by[:128], parent_id=parent_id)
            )

    def cancel(self, task_id: str, by: str) -> TaskInfo:
        """Cancel an active backup or restore (409 with the reason otherwise); the
        task reads `cancelled` at once, its runner stops its work and the node's."""
        with self.db.session() as s:
            task = self._get(s, task_id)
            kind = TaskKind(task.kind)
            if kind not in CANCELLABLE_KINDS:
                hint = " (close the access instead)" if kind == TaskKind.ACCESS else ""
                raise Conflict(f"a {kind.value} task cannot be cancelled{hint}")
            done = s.execute(
                update(Job)
                .where(Job.id == task_id, Job.state.in_(CANCELLABLE_STATES))
                .values(
                    state=JobState.CANCELLED,
                    error=f"cancelled by {by}",
                    error_code=CANCELLED_CODE,
                    finished_at=utcnow(),
                )
            )
            if done.rowcount == 0:  # type: ignore[attr-defined]
                state = s.scalar(select(Job.state).where(Job.id == task_id))
                if state == JobState.FINALIZING:
                    raise Conflict(f"task {task_id} is finishing; it cannot be cancelled now")
                raise Conflict(f"task {task_id} has ended ({state.value if state else 'gone'})")
        return self.get(task_id)
