"""Whole-VM restore to vCenter through the node: queue it, follow it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sendense.common.contract import RestoreJobStatus, new_vm_name
from sendense.common.errors import NotFound
from sendense.hub.api.deps import require_token
from sendense.hub.restore_vm import RestoreVmJobs, RestoreVmRequest

router = APIRouter(prefix="/api/v1", tags=["restore"], dependencies=[Depends(require_token)])


def _jobs(request: Request) -> RestoreVmJobs:
    jobs: RestoreVmJobs = request.app.state.restore_vm
    return jobs


RestoreVmJobsDep = Annotated[RestoreVmJobs, Depends(_jobs)]


class RestoreVmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=80, description="the VM to create")
    datastore: str | None = Field(
        default=None, max_length=255, description="default: where the first disk was"
    )
    folder: str | None = Field(
        default=None, max_length=1024, description="VM folder (default: the datacenter's)"
    )
    force: bool = Field(default=False, description="replace a powered-off VM of that name")
    power_on: bool = False
    vcenter: str | None = Field(default=None, max_length=255, description="if several")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return new_vm_name(value)


class RestoreVmQueuedOut(BaseModel):
    job_id: str
    state: str
    restore_point_id: str
    vm_name: str
    datacenter: str
    datastore: str
    folder: str
    replaces: bool
    bytes_needed: int
    warnings: list[str]


@router.post("/restore-points/{point_id}/restore-vm", status_code=202)
def restore_vm(jobs: RestoreVmJobsDep, point_id: str, body: RestoreVmIn) -> RestoreVmQueuedOut:
    """A restore point as a VM in vCenter. Refused at once (4xx, nothing changed)
    for an unknown point, a name in use without `force`, a running VM, an unknown
    datastore or one without room."""
    queued = jobs.submit(RestoreVmRequest(point_id, **body.model_dump()))
    plan = queued.plan
    return RestoreVmQueuedOut(
        job_id=queued.job_id, state="queued", restore_point_id=point_id, vm_name=plan.vm_name,
        datacenter=plan.datacenter, datastore=plan.datastore, folder=plan.folder,
        replaces=plan.replaces, bytes_needed=plan.bytes_needed, warnings=queued.warnings,
    )  # fmt: skip


@router.get("/jobs/{job_id}/restore-progress")
def restore_progress(jobs: RestoreVmJobsDep, job_id: str) -> RestoreJobStatus:
    status = jobs.progress(job_id)
    if status is None:
        raise NotFound(f"job {job_id} has no restore progress yet")
    return status
