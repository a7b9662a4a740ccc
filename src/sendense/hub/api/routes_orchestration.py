"""Backups as the operator asks for them: `POST /api/v1/backups`, progress, vCenters."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from sendense.common.contract import NodeJobStatus
from sendense.common.errors import NotFound
from sendense.hub.api.deps import require_token
from sendense.hub.orchestrator import Orchestrator
from sendense.hub.vcenters import VcenterInfo

router = APIRouter(prefix="/api/v1", tags=["backups"], dependencies=[Depends(require_token)])


def _orchestrator(request: Request) -> Orchestrator:
    orchestrator: Orchestrator = request.app.state.orchestrator
    return orchestrator


OrchestratorDep = Annotated[Orchestrator, Depends(_orchestrator)]


class BackupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vm: str = Field(min_length=1, max_length=255)
    type: Literal["auto", "full", "incremental"] = "auto"
    vcenter: str | None = Field(default=None, max_length=255)


class BackupQueued(BaseModel):
    job_id: str
    state: str


class VcenterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1, max_length=255)
    user: str = Field(min_length=1, max_length=255)
    password: SecretStr
    node: str = Field(min_length=1, max_length=64)
    thumbprint: str | None = Field(default=None, max_length=200)


@router.post("/backups", status_code=202)
def start_backup(orchestrator: OrchestratorDep, body: BackupIn) -> BackupQueued:
    job_id = orchestrator.submit(body.vm, body.type, body.vcenter)
    return BackupQueued(job_id=job_id, state="queued")


@router.get("/jobs/{job_id}/progress")
def progress(orchestrator: OrchestratorDep, job_id: str) -> NodeJobStatus:
    status = orchestrator.progress(job_id)
    if status is None:
        raise NotFound(f"job {job_id} has no progress yet")
    return status


@router.post("/vcenters", status_code=201)
def add_vcenter(orchestrator: OrchestratorDep, body: VcenterIn) -> VcenterInfo:
    return orchestrator.vcenters.add(
        body.host, body.user, body.password.get_secret_value(), body.node, body.thumbprint
    )


@router.get("/vcenters")
def list_vcenters(orchestrator: OrchestratorDep) -> list[VcenterInfo]:
    return orchestrator.vcenters.list()
