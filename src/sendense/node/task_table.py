"""The node's tasks of one kind (backups, restores): run one with the one error
handling, look up, cancel, stop them all. The wire calls them jobs (the seed's
`job_id`); inside the node they are tasks, as on the hub."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from sendense.common.contract import ACTIVE_STATES, TaskStatus
from sendense.common.errors import Conflict, NotFound, SendenseError
from sendense.nbd.errors import NbdError
from sendense.node.task_log import capture

log = logging.getLogger(__name__)


class _Task(Protocol):
    @property
    def status(self) -> TaskStatus: ...

    task: asyncio.Task[None] | None
    cancel_requested: bool
    request: dict[str, Any]


J = TypeVar("J", bound=_Task)
# Finished tasks the node remembers (for the hub's late status calls and repeated
# starts): those of the last week, and at most this many; running ones always.
KEEP_FINISHED = 2000
KEEP_FINISHED_S = 7 * 24 * 3600.0


def start_fields(request: BaseModel) -> dict[str, Any]:
    """What makes two starts the same start: every field but the password."""
    return request.model_dump(mode="json", exclude={"vcenter_password"})


class TaskTable(Generic[J]):
    what = "job"

    def __init__(self) -> None:
        self.jobs: dict[str, J] = {}
        # The finished jobs' ids with their end, in the order they ended: the
        # oldest is forgotten first, without a sort on every start.
        self._finished: OrderedDict[str, float] = OrderedDict()

    def add(self, job_id: str, job: J) -> None:
        """Remember `job`, forgetting finished ones beyond the week or the count:
        the table does not grow with the node's age."""
        self.jobs[job_id] = job
        self._finished.pop(job_id, None)
        if job.status.finished_at is not None and job.status.state not in ACTIVE_STATES:
            self._finished[job_id] = job.status.finished_at
        cutoff = time.time() - KEEP_FINISHED_S
        while self._finished:
            key, finished_at = next(iter(self._finished.items()))
            if len(self._finished) <= KEEP_FINISHED and finished_at >= cutoff:
                break
            del self._finished[key]
            self.jobs.pop(key, None)

    def get(self, job_id: str) -> J:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"node has no {self.what} {job_id}")
        return job

    def repeated(self, job_id: str, request: dict[str, Any]) -> J | None:
        """The job a start made already, when this start is the same one again (the
        hub repeats a start whose answer the tunnel lost); a Conflict when the id
        names a job started for something else; None for a new id."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.request != request:
            raise Conflict(f"{self.what} {job_id} exists already, for another VM or targets")
        return job

    def active(self) -> list[J]:
        return [j for j in self.jobs.values() if j.status.state in ACTIVE_STATES]

    def cancel(self, job_id: str) -> J:
        job = self.get(job_id)
        if job.status.state in ACTIVE_STATES and job.task is not None:
            job.cancel_requested = True
            job.task.cancel()
        return job

    async def shutdown(self) -> None:
        tasks = [j.task for j in self.jobs.values() if j.task and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def explain(self, exc: Exception) -> str | None:  # noqa: ARG002
        """A message for an exception a kind of task expects besides SendenseError
        (None: an internal error, logged with its traceback)."""
        return None

    async def run(self, job: J, work: Awaitable[None]) -> None:
        """Run `work` as `job`: its status moves running -> complete, failed or
        cancelled, with the error an operator reads; its log records go to its
        status (`task_log.capture`)."""
        with capture(job.status):
            await self._run_captured(job, work)

    async def _run_captured(self, job: J, work: Awaitable[None]) -> None:
        status = job.status
        status.state = "running"
        try:
            await work
            status.state = "complete"
            log.info("%s complete job=%s", self.what, status.job_id)
        except asyncio.CancelledError:
            status.state, status.error = "cancelled", "cancelled"
            log.warning("%s cancelled job=%s", self.what, status.job_id)
            if not job.cancel_requested:
                raise
        except (SendenseError, NbdError) as exc:
            status.state, status.error = "failed", exc.message
            log.warning("%s failed job=%s error=%s", self.what, status.job_id, exc.message)
        except Exception as exc:
            status.state = "failed"
            explained = self.explain(exc)
            if explained is not None:
                status.error = explained
                log.warning("%s failed job=%s error=%s", self.what, status.job_id, explained)
            else:
                status.error = f"internal error: {type(exc).__name__}: {exc}"
                log.exception("%s crashed job=%s", self.what, status.job_id)
        finally:
            status.finished_at = time.time()
            if self.jobs.get(status.job_id) is job:
                self._finished[status.job_id] = status.finished_at
