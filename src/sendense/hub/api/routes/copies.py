"""/api/v1/copy-targets: offsite copy targets (S3; credentials and key sealed, a
new key's recovery text shown once), copying a point, the points a target holds,
importing a bucket's catalogue, fetching a copied point back, verifying a copy."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import select

from sendense.hub.api.deps import HubDep, PrincipalDep, authorize
from sendense.hub.copy.sealing import CopyKey
from sendense.hub.copy.targets import TargetInfo, TargetSpec
from sendense.hub.db.models import CopyPoint
from sendense.hub.retention.rules import KeepRules

router = APIRouter(
    prefix="/api/v1/copy-targets", tags=["copies"], dependencies=[Depends(authorize)]
)
Name = Field(min_length=1, max_length=64)
PointId = Field(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")


class TargetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    endpoint: str = Field(min_length=8, max_length=2000, description="http(s)://host[:port]")
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = Field(default="", max_length=255)
    region: str = Field(default="us-east-1", min_length=1, max_length=64)
    addressing: Literal["path", "virtual"] = "path"
    ca_file: str | None = Field(default=None, max_length=4096)
    access_key: str = Field(min_length=1, max_length=255)
    secret_key: SecretStr = Field(min_length=1, max_length=255)
    lock: Literal["none", "governance", "compliance"] = "none"
    lock_days: int = Field(default=0, ge=0, le=36500)
    limit_mb_s: float | None = Field(default=None, gt=0, le=100000)
    full_every: int = Field(default=7, ge=1, le=1000)
    recovery_key: SecretStr | None = Field(
        default=None, description="the key of a bucket that holds copies already (its text)"
    )


class TargetCreated(BaseModel):
    target: TargetInfo
    recovery_key: str | None = Field(
        default=None, description="the new key as text: shown this once; print it and keep it"
    )


class CopyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    point_id: str = PointId


class FetchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repository: str | None = Field(default=None, min_length=1, max_length=64)


class Queued(BaseModel):
    job_id: str
    state: str


class RecoveryKey(BaseModel):
    recovery_key: str


class Imported(BaseModel):
    added: int = Field(description="restore points new to this hub's list of the target's")
    configuration: dict[str, int] = Field(
        description="policies, vCenters and users of the bucket's configuration added"
    )


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vm_pattern: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="VMs (a name pattern, * and ?) whose new verified points go by themselves",
    )
    keep_last: int = Field(default=0, ge=0, le=100000)
    keep_hourly: int = Field(default=0, ge=0, le=100000)
    keep_daily: int = Field(default=0, ge=0, le=100000)
    keep_weekly: int = Field(default=0, ge=0, le=100000)
    keep_monthly: int = Field(default=0, ge=0, le=100000)
    keep_yearly: int = Field(default=0, ge=0, le=100000)


class Pruned(BaseModel):
    kept: int
    removed: int
    waiting: int
    extended: int


class CopiedPoint(BaseModel):
    restore_point_id: str
    vm_id: str | None
    vm_name: str
    point_created_at: datetime
    copied_at: datetime
    status: str
    verified_at: datetime | None
    verify_error: str | None


@router.get("")
def list_targets(hub: HubDep) -> list[TargetInfo]:
    return hub.copy_targets.list()


@router.post("", status_code=201)
def add_target(hub: HubDep, body: TargetIn) -> TargetCreated:
    key = (
        CopyKey.from_recovery_text(body.recovery_key.get_secret_value())
        if body.recovery_key
        else None
    )
    spec = TargetSpec(
        name=body.name,
        endpoint=body.endpoint,
        bucket=body.bucket,
        access_key=body.access_key,
        secret_key=body.secret_key.get_secret_value(),
        prefix=body.prefix,
        region=body.region,
        path_style=body.addressing == "path",
        ca_file=body.ca_file,
        lock_mode=body.lock,
        lock_days=body.lock_days,
        limit_mb_s=body.limit_mb_s,
        full_every=body.full_every,
    )
    info, recovery = hub.copy_targets.add(spec, key)
    return TargetCreated(target=info, recovery_key=recovery)


@router.delete("/{name}", status_code=204)
def remove_target(hub: HubDep, name: str) -> Response:
    hub.copy_targets.remove(name)
    return Response(status_code=204)


@router.post("/{name}/key")
def export_key(hub: HubDep, name: str) -> RecoveryKey:
    """The target's key as recovery text (in the audit log: who asked, when)."""
    return RecoveryKey(recovery_key=hub.copy_targets.recovery_text(name))


@router.post("/{name}/copies", status_code=202)
def copy_point(hub: HubDep, principal: PrincipalDep, name: str, body: CopyIn) -> Queued:
    task_id = hub.copies.submit_copy(name, body.point_id)
    hub.tasks.attribute(task_id, principal.starter)
    return Queued(job_id=task_id, state="queued")


@router.get("/{name}/points")
def list_points(hub: HubDep, name: str) -> list[CopiedPoint]:
    target = hub.copy_targets.open(name)
    with hub.db.session() as s:
        rows = s.scalars(
            select(CopyPoint)
            .where(CopyPoint.target_id == target.info.id)
            .order_by(CopyPoint.point_created_at)
        ).all()
        return [
            CopiedPoint(
                restore_point_id=r.restore_point_id,
                vm_id=r.vm_id,
                vm_name=r.vm_name,
                point_created_at=r.point_created_at,
                copied_at=r.copied_at,
                status=r.status,
                verified_at=r.verified_at,
                verify_error=r.verify_error,
            )
            for r in rows
        ]


@router.post("/{name}/import")
def import_points(hub: HubDep, name: str) -> Imported:
    added, configuration = hub.copies.import_points(name)
    return Imported(added=added, configuration=configuration)


@router.post("/{name}/policy")
def set_policy(hub: HubDep, name: str, body: PolicyIn) -> TargetInfo:
    """Which VMs' new verified points the target takes by itself, and its own
    keep-* rules (all zero: it keeps everything)."""
    keep = KeepRules(
        last=body.keep_last,
        hourly=body.keep_hourly,
        daily=body.keep_daily,
        weekly=body.keep_weekly,
        monthly=body.keep_monthly,
        yearly=body.keep_yearly,
    )
    return hub.copy_targets.set_policy(name, body.vm_pattern, keep)


@router.post("/{name}/prune")
def prune(hub: HubDep, name: str) -> Pruned:
    """The target's retention now (it also runs hourly by itself)."""
    return Pruned(**vars(hub.copies.prune(name)))


@router.post("/{name}/points/{point_id}/fetch", status_code=202)
def fetch_point(
    hub: HubDep, principal: PrincipalDep, name: str, point_id: str, body: FetchIn
) -> Queued:
    task_id = hub.copies.submit_fetch(name, point_id, body.repository)
    hub.tasks.attribute(task_id, principal.starter)
    return Queued(job_id=task_id, state="queued")


@router.post("/{name}/verify", status_code=202)
def verify_copies(hub: HubDep, principal: PrincipalDep, name: str) -> Queued:
    task_id = hub.copies.submit_verify(name)
    hub.tasks.attribute(task_id, principal.starter)
    return Queued(job_id=task_id, state="queued")
