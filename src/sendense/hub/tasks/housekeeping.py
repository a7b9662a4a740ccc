"""Housekeeping of tasks: rows and logs older than `task_retention_days` go.

A task row is removed when it ended (complete, failed or cancelled) before the
cutoff (or, never started, was made before it), belongs to this hub (another
hub sharing the database keeps its own) and nothing refers to it any more: no
restore point it made, no NBD port or export, no merge step, no VM it locks, no
task it started (a schedule run's backups). Its log goes with it, and so does
a log whose task has no row (not in the last hour: a task being made).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, func, select
from sqlalchemy.orm import aliased

from sendense.hub.db.database import Database
from sendense.hub.db.models import (
    ACTIVE_JOB_STATES,
    Job,
    Merge,
    NbdExport,
    NbdPort,
    RestorePoint,
    Vm,
    utcnow,
)
from sendense.hub.tasks.task_log import TaskLogs

log = logging.getLogger(__name__)
BATCH = 500
ORPHAN_LOG_GRACE_S = 3600.0


@dataclass(frozen=True)
class HousekeepingReport:
    removed_tasks: int
    removed_logs: int
    usage_samples: int = 0  # repositories' usage sampled (hub.service)


def removable_tasks(db: Database, cutoff: datetime, limit: int = BATCH) -> list[str]:
    """Ids of this hub's ended tasks older than `cutoff` that nothing refers to."""
    child = aliased(Job)
    with db.session() as s:
        query = (
            select(Job.id)
            .where(
                db.owned(),
                Job.state.not_in(ACTIVE_JOB_STATES),
                func.coalesce(Job.finished_at, Job.created_at) < cutoff,
                ~exists().where(RestorePoint.job_id == Job.id),
                ~exists().where(NbdPort.job_id == Job.id),
                ~exists().where(NbdExport.job_id == Job.id),
                ~exists().where(Merge.job_id == Job.id),
                ~exists().where(Vm.active_job_id == Job.id),
                ~exists().where(and_(child.parent_id == Job.id, child.id != Job.id)),
            )
            .limit(limit)
        )
        return list(s.scalars(query))


def remove_old_tasks(
    db: Database, logs: TaskLogs, retention_days: int, now: datetime | None = None
) -> HousekeepingReport:
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    removed_tasks = removed_logs = 0
    while True:
        # A parent goes once its children have gone: the next batch sees it.
        doomed = removable_tasks(db, cutoff)
        if not doomed:
            break
        with db.session() as s:
            done = s.execute(
                delete(Job).where(Job.id.in_(doomed), Job.state.not_in(ACTIVE_JOB_STATES))
            )
            removed = int(getattr(done, "rowcount", 0) or 0)
        for task_id in doomed:
            if logs.path(task_id).exists():
                logs.remove(task_id)
                removed_logs += 1
        if not removed:
            break  # ended meanwhile by someone else's change: the next run sees them
        removed_tasks += removed
    removed_logs += _remove_orphan_logs(db, logs)
    if removed_tasks or removed_logs:
        log.info(
            "housekeeping removed %d tasks older than %d days and %d task logs",
            removed_tasks,
            retention_days,
            removed_logs,
        )
    return HousekeepingReport(removed_tasks, removed_logs)


def _remove_orphan_logs(db: Database, logs: TaskLogs) -> int:
    """Logs of tasks that have no row (removed by a hub that did not have the
    log, or made by a test): those untouched for an hour."""
    on_disk = logs.task_ids()
    if not on_disk:
        return 0
    known: set[str] = set()
    with db.session() as s:
        for start in range(0, len(on_disk), BATCH):
            part = on_disk[start : start + BATCH]
            known.update(s.scalars(select(Job.id).where(Job.id.in_(part))))
    removed = 0
    for task_id in on_disk:
        if task_id in known:
            continue
        try:
            age = time.time() - logs.path(task_id).stat().st_mtime
        except FileNotFoundError:
            continue
        if age >= ORPHAN_LOG_GRACE_S:
            logs.remove(task_id)
            removed += 1
    return removed
