"""/api/v1/schedules: each scheduled policy's last and next run."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from sendense.hub.api.deps import HubDep, authorize

router = APIRouter(prefix="/api/v1/schedules", tags=["policies"], dependencies=[Depends(authorize)])


class ScheduleOut(BaseModel):
    policy: str
    schedule: str
    last_run_at: datetime | None
    next_run_at: datetime
    vms: list[str]


@router.get("")
def schedules(hub: HubDep) -> list[ScheduleOut]:
    return [ScheduleOut(**vars(s)) for s in hub.scheduler.schedules()]
