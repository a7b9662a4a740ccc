"""/api/v1/audit: the audit log, newest first. Read only: no route changes it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from sendense.hub.api.deps import HubDep, authorize
from sendense.hub.auth.audit_log import MAX_PAGE

router = APIRouter(prefix="/api/v1/audit", tags=["security"], dependencies=[Depends(authorize)])


class AuditOut(BaseModel):
    id: int
    at: datetime
    token_id: str | None
    actor: str | None
    role: str | None
    method: str
    action: str
    target: dict[str, Any]
    client: str | None
    status: int
    outcome: str


@router.get("")
def audit(
    hub: HubDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> list[AuditOut]:
    return [AuditOut(**vars(e)) for e in hub.audit_log.entries(limit, offset)]
