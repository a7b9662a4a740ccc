"""/api/v1/verify: queue a verification of a restore point or of a VM's points."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from sendense.hub.api.deps import HubDep, PrincipalDep, authorize

router = APIRouter(prefix="/api/v1/verify", tags=["verify"], dependencies=[Depends(authorize)])


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(min_length=1, max_length=255, description="restore point id or VM")


class VerifyQueued(BaseModel):
    job_id: str
    state: str
    restore_points: list[str]


@router.post("", status_code=202)
def start_verify(hub: HubDep, principal: PrincipalDep, body: VerifyIn) -> VerifyQueued:
    task_id, points = hub.verifications.submit(body.target)
    hub.tasks.attribute(task_id, principal.starter)
    return VerifyQueued(job_id=task_id, state="queued", restore_points=points)
