"""Repositories: list, add, capacity."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from sendense.hub.api.deps import HubDep, require_token
from sendense.hub.repository import RepositoryInfo
from sendense.hub.schemas import CapacityOut, RepositoryIn, RepositoryOut

router = APIRouter(
    prefix="/api/v1/repositories", tags=["repositories"], dependencies=[Depends(require_token)]
)


def _out(info: RepositoryInfo) -> RepositoryOut:
    return RepositoryOut(
        id=info.id,
        name=info.name,
        path=str(info.path),
        capacity=CapacityOut.model_validate(info.capacity),
    )


@router.get("")
def list_repositories(hub: HubDep) -> list[RepositoryOut]:
    return [_out(r) for r in hub.repos.list()]


@router.post("", status_code=201)
def add_repository(hub: HubDep, body: RepositoryIn) -> RepositoryOut:
    return _out(hub.repos.add(body.path, body.name))


@router.get("/{ref}/capacity")
def capacity(hub: HubDep, ref: str) -> CapacityOut:
    return CapacityOut.model_validate(hub.repos.get(ref).capacity)
