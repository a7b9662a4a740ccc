"""Restore-point verification: queue it, follow it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from sendense.common.errors import NotFound
from sendense.hub.api.deps import require_token
from sendense.hub.verify_jobs import VerifyJobs

router = APIRouter(prefix="/api/v1", tags=["verify"], dependencies=[Depends(require_token)])


def _jobs(request: Request) -> VerifyJobs:
    jobs: VerifyJobs = request.app.state.verify_jobs
    return jobs


VerifyJobsDep = Annotated[VerifyJobs, Depends(_jobs)]


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(min_length=1, max_length=255, description="restore point id or VM")


class VerifyQueued(BaseModel):
    job_id: str
    state: str
    restore_points: list[str]


class VerifyProgressOut(BaseModel):
    bytes_total: int
    bytes_done: int
    layers_total: int
    layers_done: int


@router.post("/verify", status_code=202)
def start_verify(jobs: VerifyJobsDep, body: VerifyIn) -> VerifyQueued:
    job_id, points = jobs.submit(body.target)
    return VerifyQueued(job_id=job_id, state="queued", restore_points=points)


@router.get("/jobs/{job_id}/verify-progress")
def verify_progress(jobs: VerifyJobsDep, job_id: str) -> VerifyProgressOut:
    progress = jobs.progress(job_id)
    if progress is None:
        raise NotFound(f"job {job_id} is not a verification this hub runs")
    return VerifyProgressOut(**vars(progress))
