"""Verification as a job: `POST /api/v1/verify` queues it, one worker runs it, the
job row and the restore points hold the outcome, progress is kept in memory."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from sendense.common.errors import SendenseError
from sendense.hub.db.models import Job, JobState, RestorePoint, utcnow
from sendense.hub.service import Hub
from sendense.hub.verify import Verifier, VerifyProgress

log = logging.getLogger(__name__)


class VerifyJobs:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.verifier = Verifier(hub.db, hub.repos, hub.settings.scratch_dir)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="verify-job")
        self._progress: dict[str, VerifyProgress] = {}
        self._lock = threading.Lock()

    def submit(self, ref: str) -> tuple[str, list[str]]:
        """Queue a verification of a restore point, or of every point of a VM."""
        point_ids = self.verifier.points_of(ref)  # unknown or unfinished: refused now
        with self.hub.db.session() as s:
            point = s.get(RestorePoint, point_ids[0])
            assert point is not None
            job = Job(vm_id=point.vm_id, kind="verify", backup_type="verify")
            s.add(job)
            s.flush()
            job_id = job.id
        with self._lock:
            self._progress[job_id] = VerifyProgress()
        self._pool.submit(self._run, job_id, point_ids)
        log.info("verification queued job=%s points=%d", job_id, len(point_ids))
        return job_id, point_ids

    def progress(self, job_id: str) -> VerifyProgress | None:
        with self._lock:
            return self._progress.get(job_id)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _set(self, job_id: str, state: JobState, error: str | None = None) -> None:
        with self.hub.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return
            job.state, job.error = state, error
            if state == JobState.RUNNING:
                job.started_at = utcnow()
            else:
                job.finished_at = utcnow()

    def _run(self, job_id: str, point_ids: list[str]) -> None:
        self._set(job_id, JobState.RUNNING)
        try:
            verdicts = self.verifier.verify(point_ids, self._progress[job_id])
        except SendenseError as exc:
            self._set(job_id, JobState.FAILED, exc.message)
            return
        except Exception as exc:
            log.exception("verification crashed job=%s", job_id)
            self._set(job_id, JobState.FAILED, f"internal error: {type(exc).__name__}: {exc}")
            return
        invalid = [v.restore_point_id for v in verdicts if not v.valid]
        # The job did its work: it completes, and says what it found.
        found = f"{len(invalid)} of {len(verdicts)} restore points invalid" if invalid else None
        self._set(job_id, JobState.COMPLETE, found)
        log.info("verification done job=%s points=%d invalid=%d", job_id, len(verdicts),
                 len(invalid))  # fmt: skip
