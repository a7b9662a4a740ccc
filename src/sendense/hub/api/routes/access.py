"""/api/v1/access: open instant accesses (NBD, throwaway overlays); opening one is
POST /api/v1/restore-points/{id}/access."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from sendense.hub.api.deps import HubDep, authorize
from sendense.hub.api.schemas import AccessOpenedOut, AccessOut, DiskAccessOut
from sendense.hub.restore.instant_access import AccessInfo

router = APIRouter(prefix="/api/v1/access", tags=["restore"], dependencies=[Depends(authorize)])


def access_out(info: AccessInfo) -> AccessOut:
    """Never the key: see `opened_out`."""
    return AccessOut(
        id=info.id,
        restore_point_id=info.restore_point_id,
        purpose=info.purpose,
        started_at=info.started_at,
        disks=[DiskAccessOut(**vars(d)) for d in info.disks],
        psk_identity=info.psk_identity,
    )


def opened_out(info: AccessInfo) -> AccessOpenedOut:
    """The access just opened, with its pre-shared key (shown this once)."""
    if info.psk is None:
        raise ValueError("an instant access without its key")
    return AccessOpenedOut(**access_out(info).model_dump(), psk=info.psk)


@router.get("")
def list_access(hub: HubDep) -> list[AccessOut]:
    return [access_out(a) for a in hub.access.all()]


@router.get("/{access_id}")
def get_access(hub: HubDep, access_id: str) -> AccessOut:
    return access_out(hub.access.get(access_id))


@router.delete("/{access_id}")
def close_access(hub: HubDep, access_id: str) -> AccessOut:
    info = hub.access.get(access_id)  # not open (any more): 404
    hub.access.close(access_id)
    return access_out(info)
