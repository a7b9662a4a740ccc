"""Copies as tasks: a point uploaded, a copied point fetched back, a target's
copies verified. Uploads of one target run one at a time (its bandwidth limit
is the target's); each task holds its VM as a verification does, so no backup
or prune changes the layers it reads."""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sendense.common.errors import Conflict, SendenseError, VmBusy
from sendense.hub.copy.configuration import restore as restore_config
from sendense.hub.copy.configuration import upload_if_changed
from sendense.hub.copy.copier import Copier, CopyProgress, copyable
from sendense.hub.copy.fetch import CopyCatalogue, FetchProgress
from sendense.hub.copy.retention import CopyPruneResult, CopyRetention
from sendense.hub.copy.targets import CopyTargetService, TargetInfo
from sendense.hub.db.database import Database
from sendense.hub.db.models import (
    ACTIVE_JOB_STATES,
    CopyPoint,
    Job,
    PointStatus,
    RestorePoint,
    TaskKind,
    Vm,
    utcnow,
)
from sendense.hub.repository.repositories import RepositoryService
from sendense.hub.retention.rules import KeepRules
from sendense.hub.tasks.runner import VmTaskRunner
from sendense.hub.tasks.task_log import TaskLogs
from sendense.hub.tasks.vm_lock import lock_vm
from sendense.nbd.qemu_img import QemuImg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopySettings:
    scratch: Path
    zone: tzinfo
    prune_every_s: float = 3600.0
    verify_every_s: float = 7 * 86400.0


def new_points(db: Database, info: TargetInfo) -> list[str]:
    """Complete, verified points of VMs the target's pattern matches, made since
    the target was added and after the newest point it holds of their VM (a point
    its retention removed is not copied again), that no copy task is taking,
    oldest first."""
    pattern = info.vm_pattern or ""
    with db.session() as s:
        newest = dict(
            s.execute(
                select(CopyPoint.vm_id, func.max(CopyPoint.point_created_at))
                .where(CopyPoint.target_id == info.id)
                .group_by(CopyPoint.vm_id)
            ).all()
        )
        taking = select(Job.restore_point_id).where(
            Job.kind == TaskKind.COPY,
            Job.state.in_(ACTIVE_JOB_STATES),
            Job.restore_point_id.is_not(None),
        )
        rows = s.execute(
            select(RestorePoint.id, RestorePoint.vm_id, RestorePoint.created_at, Vm.name)
            .join(Vm, Vm.id == RestorePoint.vm_id)
            .where(
                RestorePoint.status == PointStatus.COMPLETE,
                RestorePoint.verified_at.is_not(None),
                RestorePoint.created_at >= info.created_at,
                RestorePoint.id.not_in(taking),
            )
            .order_by(RestorePoint.created_at)
        ).all()
    found = []
    for point_id, vm_id, created_at, vm in rows:
        after = _as_utc(newest.get(vm_id))
        if fnmatch.fnmatchcase(vm, pattern) and (after is None or created_at > after):
            found.append(point_id)
    return found


def _as_utc(value: datetime | str | None) -> datetime | None:
    """An aggregate of a stored time (SQLite gives its text back)."""
    if value is None:
        return None
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class CopyRunner(VmTaskRunner[CopyProgress | FetchProgress]):
    name = "copy"

    def __init__(
        self,
        db: Database,
        targets: CopyTargetService,
        repos: RepositoryService,
        qemu_img: QemuImg,
        settings: CopySettings,
        logs: TaskLogs | None = None,
    ) -> None:
        super().__init__(db, workers=2, logs=logs)
        self.targets = targets
        self.settings = settings
        self.copier = Copier(db, repos, qemu_img, settings.scratch)
        self.catalogue = CopyCatalogue(db, repos, qemu_img, settings.scratch)
        self.retention = CopyRetention(db, settings.zone)
        self._pruned: dict[str, float] = {}
        self._turn = 0
        self._verifying: dict[str, str] = {}  # target id -> its verification task

    def sweep(self) -> int:
        """Every target: its configuration written if it changed, new verified points
        of its VMs queued (oldest first; one task per VM at a time, so chains go up
        in order), its retention run when due. Returns the copies queued."""
        queued = 0
        targets = self.targets.list()
        # One task per VM at a time: the target that goes first takes turns, so a
        # VM copied to several targets starves none of them.
        self._turn = (self._turn + 1) % max(1, len(targets))
        for info in targets[self._turn :] + targets[: self._turn]:
            try:
                target = self.targets.open(info.name)
                upload_if_changed(self.db, self.targets.box, target)
                if info.vm_pattern:
                    queued += self._queue_new(info)
                due = self._pruned.get(info.id, 0.0) + self.settings.prune_every_s
                if info.keep and time.monotonic() >= due:
                    self.prune(info.name)
                if self._verify_due(info):
                    self._verifying[info.id] = self.submit_verify(info.name)
            except SendenseError as exc:
                log.warning("copy target %s: %s", info.name, exc.message)
        return queued

    def _verify_due(self, info: TargetInfo) -> bool:
        """A target whose least recently checked point was checked (or copied) more
        than `verify_every_s` ago, and that no verification is reading now."""
        running = self._verifying.get(info.id)
        with self.db.session() as s:
            if running is not None:
                job = s.get(Job, running)
                if job is not None and job.state in ACTIVE_JOB_STATES:
                    return False
            oldest = s.scalar(
                select(func.min(func.coalesce(CopyPoint.verified_at, CopyPoint.copied_at))).where(
                    CopyPoint.target_id == info.id
                )
            )
        when = _as_utc(oldest)
        if when is None:
            return False
        return (utcnow() - when).total_seconds() >= self.settings.verify_every_s

    def _queue_new(self, info: TargetInfo) -> int:
        queued = 0
        for point_id in new_points(self.db, info):
            try:
                self.submit_copy(info.name, point_id)
                queued += 1
            except (VmBusy, Conflict):
                continue  # its VM is busy (a backup, an earlier copy): next sweep
        return queued

    def prune(self, name: str) -> CopyPruneResult:
        target = self.targets.open(name)
        keep = KeepRules(**target.info.keep) if target.info.keep else None
        result = self.retention.run(target, keep)
        self._pruned[target.info.id] = time.monotonic()
        return result

    def submit_copy(self, target_name: str, point_id: str) -> str:
        target = self.targets.open(target_name)
        with self.db.session() as s:
            point = copyable(s.get(RestorePoint, point_id), point_id)
            task_id = self._task(s, TaskKind.COPY, point.vm_id, point_id)
            lock_vm(s, s.get_one(Vm, point.vm_id), task_id)
        progress = CopyProgress()
        self.board.put(task_id, progress)
        self.queue(task_id, lambda: self.copier.copy(target, point_id, progress))
        return task_id

    def submit_fetch(self, target_name: str, point_id: str, repository: str | None) -> str:
        target = self.targets.open(target_name)
        self.catalogue.manifest(target, point_id)  # not on the target: refused now
        with self.db.session() as s:
            copied = s.scalars(
                select(CopyPoint).where(
                    CopyPoint.target_id == target.info.id, CopyPoint.restore_point_id == point_id
                )
            ).one()
            task_id = self._task(s, TaskKind.FETCH, copied.vm_id, point_id)
        progress = FetchProgress()
        self.board.put(task_id, progress)
        self.queue(
            task_id,
            lambda: self.catalogue.fetch(target, point_id, repository, task_id, progress),
        )
        return task_id

    def submit_verify(self, target_name: str) -> str:
        target = self.targets.open(target_name)
        with self.db.session() as s:
            task_id = self._task(s, TaskKind.VERIFY, None, None)
        progress = FetchProgress()
        self.board.put(task_id, progress)

        def verify() -> str | None:
            points, invalid = self.catalogue.verify(target, progress)
            return f"{invalid} of {points} copied points invalid" if invalid else None

        self.queue(task_id, verify)
        return task_id

    def import_points(self, target_name: str) -> tuple[int, dict[str, int]]:
        """The bucket's points into the catalogue, and the hub configuration it
        holds (what this hub lacks of it)."""
        target = self.targets.open(target_name)
        added = self.catalogue.import_points(target)
        return added, restore_config(self.db, self.targets.box, target)

    @staticmethod
    def _task(s: Session, kind: TaskKind, vm_id: str | None, point_id: str | None) -> str:
        if vm_id is not None and s.get(Vm, vm_id) is None:
            vm_id = None
        job = Job(vm_id=vm_id, kind=kind, restore_point_id=point_id)
        s.add(job)
        s.flush()
        return job.id
