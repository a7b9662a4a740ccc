"""Verification as a task: `POST /api/v1/verify` queues it, one worker runs it,
the task row and the restore points hold the outcome."""

from __future__ import annotations

import logging

from sendense.hub.db.database import Database
from sendense.hub.db.models import Job, RestorePoint, TaskKind, Vm
from sendense.hub.tasks.runner import VmTaskRunner
from sendense.hub.tasks.task_log import TaskLogs
from sendense.hub.tasks.vm_lock import lock_vm
from sendense.hub.verify.verifier import Verifier, VerifyProgress

log = logging.getLogger(__name__)


class VerifyRunner(VmTaskRunner[VerifyProgress]):
    name = "verify"

    def __init__(self, db: Database, verifier: Verifier, logs: TaskLogs | None = None) -> None:
        super().__init__(db, workers=1, logs=logs)
        self.verifier = verifier

    def submit(self, ref: str) -> tuple[str, list[str]]:
        """Queue a verification of a restore point, or of every point of a VM."""
        point_ids = self.verifier.points_of(ref)  # unknown or unfinished: refused now
        with self.db.session() as s:
            point = s.get_one(RestorePoint, point_ids[0])
            job = Job(vm_id=point.vm_id, kind=TaskKind.VERIFY)
            s.add(job)
            s.flush()
            task_id = job.id
            # While a backup writes a layer on these points, or a prune re-parents
            # them, a verdict could invalidate the wrong layer: one task per VM.
            lock_vm(s, s.get_one(Vm, point.vm_id), task_id)
        self.board.put(task_id, VerifyProgress())
        self.queue(task_id, lambda: self._verify(task_id, point_ids))
        log.info("verification queued task=%s points=%d", task_id, len(point_ids))
        return task_id, point_ids

    def _verify(self, task_id: str, point_ids: list[str]) -> str | None:
        progress = self.board.get(task_id) or VerifyProgress()
        verdicts = self.verifier.verify(point_ids, progress)
        invalid = [v.restore_point_id for v in verdicts if not v.valid]
        log.info(
            "verification done task=%s points=%d invalid=%d", task_id, len(verdicts), len(invalid)
        )
        # The task did its work: it completes, and says what it found.
        return f"{len(invalid)} of {len(verdicts)} restore points invalid" if invalid else None
