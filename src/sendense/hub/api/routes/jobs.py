"""/api/v1/jobs: tasks and their live progress, and the hub's half of a backup
driven from outside (open exports for a VM's disks, then finish or fail it)."""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter, Depends

from sendense.common.contract import NodeJobStatus, RestoreJobStatus
from sendense.common.errors import NotFound
from sendense.hub.api.deps import HubDep, QueriesDep, authorize
from sendense.hub.api.schemas import (
    JobCreatedOut,
    JobCreateIn,
    JobFinishIn,
    JobOut,
    TargetOut,
    VerifyProgressOut,
)
from sendense.hub.backup.disks import DiskResult, DiskSpec

P = TypeVar("P")
router = APIRouter(prefix="/api/v1/jobs", tags=["backups"], dependencies=[Depends(authorize)])


@router.get("")
def list_jobs(queries: QueriesDep) -> list[JobOut]:
    return queries.jobs()


@router.get("/{job_id}")
def get_job(queries: QueriesDep, job_id: str) -> JobOut:
    return queries.job(job_id)


@router.post("", status_code=201)
def create_job(hub: HubDep, body: JobCreateIn) -> JobCreatedOut:
    disks = [DiskSpec(**d.model_dump()) for d in body.disks]
    job = hub.ledger.prepare(
        body.vm_name,
        disks,
        body.backup_type,
        body.repository,
        vcenter=body.vcenter,
        vm_uuid=body.vm_uuid,
        node=hub.job_node(body.vcenter),
    )
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


@router.post("/{job_id}/finish")
def finish_job(hub: HubDep, queries: QueriesDep, job_id: str, body: JobFinishIn) -> JobOut:
    """Backups only: another kind of task is 409 `wrong_task_kind` and left as it is."""
    if body.success:
        results = {k: DiskResult(**v.model_dump()) for k, v in body.disks.items()}
        hub.ledger.finish(job_id, results)
    else:
        hub.ledger.fail_backup(job_id, body.error or "reported failed by the caller")
    return queries.job(job_id)


def _found(progress: P | None, job_id: str, what: str) -> P:
    if progress is None:
        raise NotFound(f"job {job_id} has no {what}")
    return progress


@router.get("/{job_id}/progress")
def progress(hub: HubDep, job_id: str) -> NodeJobStatus:
    return _found(hub.backups.progress(job_id), job_id, "progress yet")


@router.get("/{job_id}/restore-progress")
def restore_progress(hub: HubDep, job_id: str) -> RestoreJobStatus:
    return _found(hub.restores.progress(job_id), job_id, "restore progress yet")


@router.get("/{job_id}/verify-progress")
def verify_progress(hub: HubDep, job_id: str) -> VerifyProgressOut:
    progress = _found(hub.verifications.progress(job_id), job_id, "verification on this hub")
    return VerifyProgressOut(**vars(progress))
