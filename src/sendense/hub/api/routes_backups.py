"""VMs, restore points and jobs. The job write side here is the hub's half of a
backup: open exports for a VM's disks, then finish or fail the job."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from sendense.hub.api.deps import HubDep, require_token
from sendense.hub.backups import DiskResult, DiskSpec
from sendense.hub.schemas import (
    JobCreatedOut,
    JobCreateIn,
    JobFinishIn,
    JobOut,
    RestorePointOut,
    TargetOut,
    VmOut,
)

router = APIRouter(prefix="/api/v1", tags=["backups"], dependencies=[Depends(require_token)])


@router.get("/vms")
def list_vms(hub: HubDep) -> list[VmOut]:
    return hub.queries.vms()


@router.get("/vms/{ref}")
def get_vm(hub: HubDep, ref: str) -> VmOut:
    return hub.queries.vm(ref)


@router.get("/restore-points")
def list_restore_points(hub: HubDep, vm: str | None = None) -> list[RestorePointOut]:
    return hub.queries.restore_points(vm)


@router.get("/restore-points/{point_id}")
def get_restore_point(hub: HubDep, point_id: str) -> RestorePointOut:
    return hub.queries.restore_point(point_id)


@router.get("/jobs")
def list_jobs(hub: HubDep) -> list[JobOut]:
    return hub.queries.jobs()


@router.get("/jobs/{job_id}")
def get_job(hub: HubDep, job_id: str) -> JobOut:
    return hub.queries.job(job_id)


@router.post("/jobs", status_code=201)
def create_job(hub: HubDep, body: JobCreateIn) -> JobCreatedOut:
    disks = [DiskSpec(**d.model_dump()) for d in body.disks]
    job = hub.backups.prepare(body.vm_name, disks, body.backup_type, body.repository)
    return JobCreatedOut(
        job_id=job.job_id,
        restore_point_id=job.restore_point_id,
        nbd_targets=job.nbd_targets,
        targets=[
            TargetOut(
                disk_key=d.key,
                backup_type=d.backup_type,
                port=d.target.port,
                export_name=d.target.export,
                uri=d.target.uri,
            )
            for d in job.disks
        ],
    )


@router.post("/jobs/{job_id}/finish")
def finish_job(hub: HubDep, job_id: str, body: JobFinishIn) -> JobOut:
    if body.success:
        results = {k: DiskResult(**v.model_dump()) for k, v in body.disks.items()}
        hub.backups.finish(job_id, results)
    else:
        hub.backups.fail(job_id, body.error or "reported failed by the caller")
    return hub.queries.job(job_id)
