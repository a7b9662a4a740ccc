"""Start-up clean-up of what a crash (kill -9, power loss) left behind.

A hub that starts owns no running job, so every job the database still calls
active died with the previous process: its qemu-nbd servers are stopped
(after checking pid and command line), its ports freed, its unfinished files
and rows removed. Complete restore points are never touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, or_, select, update

from sendense.hub.backup.ledger import BackupLedger
from sendense.hub.db.models import (
    ACTIVE_JOB_STATES,
    Job,
    NbdPort,
    PointStatus,
    RestorePoint,
    Vm,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    failed_jobs: int
    stopped_exports: int
    released_ports: int
    removed_points: int


def reconcile(
    ledger: BackupLedger, reason: str = "the hub restarted during the job"
) -> ReconcileReport:
    """Only this hub's tasks: another hub sharing the database keeps its own."""
    db = ledger.db
    with db.session() as s:
        stale_jobs = list(
            s.scalars(select(Job.id).where(Job.state.in_(ACTIVE_JOB_STATES), db.owned()))
        )
        others_running = set(
            s.scalars(select(Job.id).where(Job.state.in_(ACTIVE_JOB_STATES), ~db.owned()))
        )
    for job_id in stale_jobs:
        ledger.fail(job_id, reason)
    stopped = ledger.exports.stop_orphans(active_job_ids=others_running)
    with db.session() as s:
        mine = select(Job.id).where(db.owned())
        ports = s.execute(
            delete(NbdPort).where(or_(NbdPort.job_id.is_(None), NbdPort.job_id.in_(mine)))
        )
        released = int(getattr(ports, "rowcount", 0) or 0)
        leftovers = s.scalars(
            select(RestorePoint).where(
                RestorePoint.status == PointStatus.INCOMPLETE, RestorePoint.job_id.in_(mine)
            )
        ).all()
        doomed = [(p.id, p.repository_id, [d.file_path for d in p.disks]) for p in leftovers]
        s.execute(
            update(Vm)
            .where(or_(Vm.active_job_id.is_(None), ~Vm.active_job_id.in_(others_running)))
            .values(active_job_id=None)
        )
    # a point whose repository is not mounted is kept for a start-up that finds it
    kept = ledger.remove_files(doomed)
    doomed = [d for d in doomed if d[0] not in kept]
    with db.session() as s:
        for point_id, _repo, _files in doomed:
            point = s.get(RestorePoint, point_id)
            if point is not None:
                for disk in point.disks:
                    s.delete(disk)
                s.delete(point)
    report = ReconcileReport(len(stale_jobs), stopped, released, len(doomed))
    if any(vars(report).values()):
        log.warning(
            "start-up clean-up failed_jobs=%d stopped_exports=%d released_ports=%d "
            "removed_points=%d",
            report.failed_jobs,
            report.stopped_exports,
            report.released_ports,
            report.removed_points,
        )
    return report
