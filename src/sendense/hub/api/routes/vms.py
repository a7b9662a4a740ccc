"""/api/v1/vms: the VMs the hub knows, with their disks."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from sendense.hub.api.deps import QueriesDep, authorize
from sendense.hub.api.schemas import VmOut

router = APIRouter(prefix="/api/v1/vms", tags=["backups"], dependencies=[Depends(authorize)])


@router.get("")
def list_vms(queries: QueriesDep) -> list[VmOut]:
    return queries.vms()


@router.get("/{ref}")
def get_vm(queries: QueriesDep, ref: str) -> VmOut:
    return queries.vm(ref)
