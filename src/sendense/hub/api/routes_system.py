"""Health (no token), ports and exports."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import text

from sendense import __version__
from sendense.hub.api.deps import HubDep, require_token
from sendense.hub.schemas import ExportOut, PortAllocationOut, PortPoolOut

public = APIRouter(prefix="/api/v1", tags=["system"])
router = APIRouter(prefix="/api/v1", tags=["system"], dependencies=[Depends(require_token)])


@public.get("/health")
def health(hub: HubDep) -> dict[str, str]:
    try:
        with hub.db.session() as s:
            s.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:
        database = f"error: {type(exc).__name__}"
    return {
        "status": "ok" if database == "ok" else "degraded",
        "version": __version__,
        "database": database,
    }


@router.get("/ports")
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


@router.get("/exports")
def exports(hub: HubDep) -> list[ExportOut]:
    return [ExportOut.model_validate(e) for e in hub.exports.list()]
