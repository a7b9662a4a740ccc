"""/api/v1/repositories: list, add, capacity, usage history, check."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict

from sendense.hub.api.deps import HubDep, authorize
from sendense.hub.api.schemas import CapacityOut, RepositoryIn, RepositoryOut
from sendense.hub.repository.repositories import RepositoryInfo
from sendense.hub.repository.usage_history import KEEP_DAYS, UsagePoint
from sendense.hub.retention.space import RepositoryUsage, repository_usage

router = APIRouter(
    prefix="/api/v1/repositories", tags=["repositories"], dependencies=[Depends(authorize)]
)


def _out(
    info: RepositoryInfo, usage: RepositoryUsage | None = None, promised: int = 0
) -> RepositoryOut:
    usage = usage or RepositoryUsage()
    return RepositoryOut(
        id=info.id,
        name=info.name,
        path=str(info.path),
        capacity=CapacityOut.model_validate(info.capacity),
        backup_bytes=usage.backup_bytes,
        prunable_bytes=usage.prunable_bytes,
        promised_bytes=promised,
    )


@router.get("")
def list_repositories(hub: HubDep) -> list[RepositoryOut]:
    """Each repository with its free space, what its backups take, what prune
    (each VM's policy, now) would free, and what the backups running on it may
    still write."""
    usage = repository_usage(hub.prune, hub.policies)
    return [_out(r, usage.get(r.id), hub.repos.promised(r)) for r in hub.repos.list()]


@router.post("", status_code=201)
def add_repository(hub: HubDep, body: RepositoryIn) -> RepositoryOut:
    added = hub.repos.add(body.path, body.name)
    hub.usage_history.sample([added], hub.today())  # its first day's sample, not in an hour
    return _out(added)


@router.get("/{ref}/capacity")
def capacity(hub: HubDep, ref: str) -> CapacityOut:
    return CapacityOut.model_validate(hub.repos.get(ref).capacity)


@router.get("/{ref}/usage-history")
def usage_history(
    hub: HubDep, ref: str, days: Annotated[int, Query(ge=1, le=KEEP_DAYS)] = 365
) -> list[UsagePoint]:
    """The repository's daily usage samples of the last `days` days (in the hub's
    time zone), oldest first: a day the hub did not run, or the repository was not
    mounted, has none."""
    repo = hub.repos.get(ref, check_mounted=False)
    return hub.usage_history.series(repo.id, days, today=hub.today())


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repair: bool = False


class FindingOut(BaseModel):
    kind: str
    path: str
    restore_point_id: str | None
    layer_id: str | None
    detail: str
    repaired: bool


class CheckOut(BaseModel):
    repository: str
    files: int
    layers: int
    clean: bool
    findings: list[FindingOut]


@router.post("/{ref}/check")
def check(hub: HubDep, ref: str, body: CheckIn) -> CheckOut:
    """Files without restore points, layers without files, chains whose files name
    another parent; `repair` removes orphan files and marks the rest invalid."""
    report = hub.audit.run(ref, body.repair)
    return CheckOut(
        repository=report.repository,
        files=report.files,
        layers=report.layers,
        clean=report.clean,
        findings=[FindingOut(**asdict(f)) for f in report.findings],
    )
