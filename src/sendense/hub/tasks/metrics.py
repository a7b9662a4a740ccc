"""Prometheus metrics (`GET /metrics`), read from the database and the
repositories' file systems at each scrape: nothing is counted in memory, so a
restarted hub reports the same figures and no finished task stays in memory.

Names follow Prometheus conventions: `sendense_` first, the unit last
(`_seconds`, `_bytes`), gauges of counts in the plural.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sendense.hub.db.database import Database
from sendense.hub.db.models import (
    Job,
    NbdPort,
    Node,
    PointStatus,
    Repository,
    RestorePoint,
    RestorePointDisk,
    Vcenter,
    Vm,
)
from sendense.hub.repository.repositories import capacity_of

log = logging.getLogger(__name__)
VM_LABELS = ["vm", "vm_id", "vcenter"]


@dataclass(frozen=True)
class LastBackup:
    """A VM's newest complete restore point and the job that made it."""

    labels: list[str]
    completed_at: datetime
    seconds: float | None
    read_bytes: int
    written_bytes: int


class HubCollector(Collector):
    def __init__(self, db: Database, pool_size: int) -> None:
        self.db = db
        self.pool_size = pool_size

    def collect(self) -> Iterator[Metric]:
        with self.db.session() as s:
            yield from self._vms(s)
            yield from self._repositories(s)
            yield from self._tasks(s)
            yield from self._pool_and_nodes(s)

    def _vms(self, s: Session) -> Iterable[Metric]:
        last_success = GaugeMetricFamily(
            "sendense_vm_last_success_timestamp_seconds",
            "When the VM's newest complete restore point was completed (Unix time)",
            labels=VM_LABELS,
        )
        duration = GaugeMetricFamily(
            "sendense_vm_last_backup_duration_seconds",
            "How long the backup that made the newest complete point ran",
            labels=VM_LABELS,
        )
        read = GaugeMetricFamily(
            "sendense_vm_last_backup_read_bytes",
            "Bytes the node read from the VM's disks for the newest complete point",
            labels=VM_LABELS,
        )
        written = GaugeMetricFamily(
            "sendense_vm_last_backup_written_bytes",
            "Bytes the newest complete point's files take in the repository",
            labels=VM_LABELS,
        )
        points = GaugeMetricFamily(
            "sendense_vm_restore_points",
            "Complete restore points of the VM",
            labels=VM_LABELS,
        )
        counts = dict(
            s.execute(
                select(RestorePoint.vm_id, func.count())
                .where(RestorePoint.status == PointStatus.COMPLETE)
                .group_by(RestorePoint.vm_id)
            ).all()
        )
        for vm_id, last in self._last_backups(s).items():
            last_success.add_metric(last.labels, last.completed_at.timestamp())
            if last.seconds is not None:
                duration.add_metric(last.labels, last.seconds)
            read.add_metric(last.labels, last.read_bytes)
            written.add_metric(last.labels, last.written_bytes)
            points.add_metric(last.labels, counts.get(vm_id, 0))
        return [last_success, duration, read, written, points]

    @staticmethod
    def _last_backups(s: Session) -> dict[str, LastBackup]:
        newest = (
            select(RestorePoint.vm_id, func.max(RestorePoint.completed_at).label("at"))
            .where(RestorePoint.status == PointStatus.COMPLETE)
            .group_by(RestorePoint.vm_id)
            .subquery()
        )
        rows = s.execute(
            select(RestorePoint, Vm, Job, Vcenter.host)
            .join(
                newest,
                (newest.c.vm_id == RestorePoint.vm_id) & (newest.c.at == RestorePoint.completed_at),
            )
            .join(Vm, Vm.id == RestorePoint.vm_id)
            .join(Job, Job.id == RestorePoint.job_id)
            .outerjoin(Vcenter, Vcenter.id == Vm.vcenter_id)
        ).all()
        found: dict[str, LastBackup] = {}
        for point, vm, job, vcenter in rows:
            if point.completed_at is None:
                continue
            sums = s.execute(
                select(
                    func.coalesce(func.sum(RestorePointDisk.data_bytes), 0),
                    func.coalesce(func.sum(RestorePointDisk.file_size), 0),
                ).where(RestorePointDisk.restore_point_id == point.id)
            ).one()
            seconds = (
                (job.finished_at - job.started_at).total_seconds()
                if job.finished_at and job.started_at
                else None
            )
            found[vm.id] = LastBackup(
                [vm.name, vm.id, vcenter or ""],
                point.completed_at,
                seconds,
                int(sums[0] or 0),
                int(sums[1] or 0),
            )
        return found

    @staticmethod
    def _repositories(s: Session) -> Iterable[Metric]:
        labels = ["repository", "path"]
        size = GaugeMetricFamily(
            "sendense_repository_size_bytes", "Size of the repository's file system", labels=labels
        )
        free = GaugeMetricFamily(
            "sendense_repository_free_bytes",
            "Bytes free for the hub on the repository's file system",
            labels=labels,
        )
        used = GaugeMetricFamily(
            "sendense_repository_used_bytes",
            "Bytes the restore points' files take in the repository",
            labels=labels,
        )
        up = GaugeMetricFamily(
            "sendense_repository_up",
            "1 when the repository's directory can be read, 0 when it is missing",
            labels=labels,
        )
        taken = dict(
            s.execute(
                select(RestorePoint.repository_id, func.sum(RestorePointDisk.file_size))
                .join(RestorePointDisk, RestorePointDisk.restore_point_id == RestorePoint.id)
                .group_by(RestorePoint.repository_id)
            ).all()
        )
        for repo in s.scalars(select(Repository).order_by(Repository.name)):
            names = [repo.name, repo.path]
            used.add_metric(names, taken.get(repo.id) or 0)
            try:
                capacity = capacity_of(Path(repo.path))
            except OSError as exc:
                log.warning("metrics: repository %s unreadable: %s", repo.name, exc)
                up.add_metric(names, 0)
                continue
            up.add_metric(names, 1)
            size.add_metric(names, capacity.total)
            free.add_metric(names, capacity.free)
        return [size, free, used, up]

    @staticmethod
    def _tasks(s: Session) -> Iterable[Metric]:
        tasks = GaugeMetricFamily(
            "sendense_tasks", "Tasks the hub keeps, by kind and state", labels=["kind", "state"]
        )
        for kind, state, count in s.execute(
            select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
        ):
            tasks.add_metric([str(kind), str(state)], count)
        invalid = GaugeMetricFamily(
            "sendense_restore_points_invalid",
            "Restore points verification or a repository check found invalid",
        )
        invalid.add_metric(
            [],
            s.scalar(
                select(func.count())
                .select_from(RestorePoint)
                .where(RestorePoint.status == PointStatus.INVALID)
            )
            or 0,
        )
        return [tasks, invalid]

    def _pool_and_nodes(self, s: Session) -> Iterable[Metric]:
        in_use = GaugeMetricFamily(
            "sendense_nbd_ports_in_use", "NBD ports of the pool allocated to exports"
        )
        in_use.add_metric([], s.scalar(select(func.count()).select_from(NbdPort)) or 0)
        pool = GaugeMetricFamily("sendense_nbd_ports", "NBD ports in the pool")
        pool.add_metric([], self.pool_size)
        nodes = GaugeMetricFamily(
            "sendense_nodes", "Enrolled (not revoked) nodes, by tunnel state", labels=["state"]
        )
        by_state = dict(
            s.execute(
                select(Node.connected, func.count())
                .where(Node.revoked.is_(False))
                .group_by(Node.connected)
            ).all()
        )
        nodes.add_metric(["connected"], by_state.get(True, 0))
        nodes.add_metric(["disconnected"], by_state.get(False, 0))
        return [in_use, pool, nodes]


def render(db: Database, pool_size: int) -> bytes:
    """The metrics in Prometheus' text format, read now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(db, pool_size))
    return generate_latest(registry)
