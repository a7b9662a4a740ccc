"""/api/v1/health: no token."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from sendense import __version__
from sendense.hub.api.deps import HubDep

public = APIRouter(prefix="/api/v1", tags=["system"])


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
