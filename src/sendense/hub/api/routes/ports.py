"""/api/v1/ports: the NBD port pool and its allocations."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from sendense.hub.api.deps import HubDep, authorize
from sendense.hub.api.schemas import PortAllocationOut, PortPoolOut

router = APIRouter(prefix="/api/v1/ports", tags=["system"], dependencies=[Depends(authorize)])


@router.get("")
def ports(hub: HubDep) -> PortPoolOut:
    pool = hub.ports.status()
    return PortPoolOut(
        first=pool.first,
        last=pool.last,
        total=pool.total,
        used=pool.used,
        free=pool.free,
        allocations=[PortAllocationOut.model_validate(a) for a in pool.allocations],
    )
