"""The node's jobs of one kind (backups, restores): look up, cancel, stop them all."""

from __future__ import annotations

import asyncio
from typing import Generic, Protocol, TypeVar

from sendense.common.errors import NotFound

ACTIVE = ("queued", "running")


class _Status(Protocol):
    @property
    def state(self) -> str: ...


class _Job(Protocol):
    @property
    def status(self) -> _Status: ...

    task: asyncio.Task[None] | None
    cancel_requested: bool


J = TypeVar("J", bound=_Job)


class JobTable(Generic[J]):
    what = "job"

    def __init__(self) -> None:
        self.jobs: dict[str, J] = {}

    def get(self, job_id: str) -> J:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"node has no {self.what} {job_id}")
        return job

    def cancel(self, job_id: str) -> J:
        job = self.get(job_id)
        if job.status.state in ACTIVE and job.task is not None:
            job.cancel_requested = True
            job.task.cancel()
        return job

    async def shutdown(self) -> None:
        tasks = [j.task for j in self.jobs.values() if j.task and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
