"""/api/v1/exports: the NBD exports (qemu-nbd servers) running now."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from sendense.hub.api.deps import HubDep, authorize
from sendense.hub.api.schemas import ExportOut

router = APIRouter(prefix="/api/v1/exports", tags=["system"], dependencies=[Depends(authorize)])


@router.get("")
def exports(hub: HubDep) -> list[ExportOut]:
    return [ExportOut.model_validate(e) for e in hub.exports.list()]
