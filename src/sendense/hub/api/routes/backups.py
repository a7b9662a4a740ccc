"""/api/v1/backups: a backup as the operator asks for it (the hub runs it)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from sendense.hub.api.deps import HubDep, PrincipalDep, authorize

router = APIRouter(prefix="/api/v1/backups", tags=["backups"], dependencies=[Depends(authorize)])


class BackupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vm: str = Field(min_length=1, max_length=255)
    type: Literal["auto", "full", "incremental"] = "auto"
    vcenter: str | None = Field(default=None, max_length=255)


class BackupQueued(BaseModel):
    job_id: str
    state: str


@router.post("", status_code=202)
def start_backup(hub: HubDep, principal: PrincipalDep, body: BackupIn) -> BackupQueued:
    task_id = hub.backups.submit(body.vm, body.type, body.vcenter, principal.starter)
    return BackupQueued(job_id=task_id, state="queued")
