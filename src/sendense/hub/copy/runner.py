"""Copies as tasks: a point uploaded, a copied point fetched back, a target's
copies verified. Uploads of one target run one at a time (its bandwidth limit
is the target's); each task holds its VM as a verification does, so no backup
or prune changes the layers it reads."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from sendense.hub.copy.copier import Copier, CopyProgress, copyable
from sendense.hub.copy.fetch import CopyCatalogue, FetchProgress
from sendense.hub.copy.targets import CopyTargetService
from sendense.hub.db.copy_models import CopyPoint
from sendense.hub.db.database import Database
from sendense.hub.db.models import Job, RestorePoint, TaskKind, Vm
from sendense.hub.repository.repositories import RepositoryService
from sendense.hub.tasks.runner import TaskRunner
from sendense.hub.tasks.task_log import TaskLogs
from sendense.hub.tasks.vm_lock import lock_vm, unlock_vm
from sendense.nbd.qemu_img import QemuImg

log = logging.getLogger(__name__)


class CopyRunner(TaskRunner[CopyProgress | FetchProgress]):
    name = "copy"

    def __init__(
        self,
        db: Database,
        targets: CopyTargetService,
        repos: RepositoryService,
        qemu_img: QemuImg,
        scratch: Path,
        logs: TaskLogs | None = None,
    ) -> None:
        super().__init__(db, workers=2, logs=logs)
        self.targets = targets
        self.copier = Copier(db, repos, qemu_img, scratch)
        self.catalogue = CopyCatalogue(db, repos, qemu_img, scratch)

    def submit_copy(self, target_name: str, point_id: str) -> str:
        target = self.targets.open(target_name)
        with self.db.session() as s:
            point = copyable(s.get(RestorePoint, point_id), point_id)
            task_id = self._task(s, TaskKind.COPY, point.vm_id, point_id)
            lock_vm(s, s.get_one(Vm, point.vm_id), task_id)
        progress = CopyProgress()
        self.board.put(task_id, progress)
        self.queue(
            task_id,
            lambda: self.copier.copy(self.targets.open(target.info.name), point_id, progress),
        )
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

    def import_points(self, target_name: str) -> int:
        return self.catalogue.import_points(self.targets.open(target_name))

    @staticmethod
    def _task(s: Session, kind: TaskKind, vm_id: str | None, point_id: str | None) -> str:
        if vm_id is not None and s.get(Vm, vm_id) is None:
            vm_id = None
        job = Job(vm_id=vm_id, kind=kind, restore_point_id=point_id)
        s.add(job)
        s.flush()
        return job.id

    def complete(self, task_id: str, note: str | None) -> None:
        super().complete(task_id, note)
        self._release(task_id)

    def fail(self, task_id: str, message: str) -> None:
        super().fail(task_id, message)
        self._release(task_id)

    def _release(self, task_id: str) -> None:
        with self.db.session() as s:
            unlock_vm(s, task_id)
