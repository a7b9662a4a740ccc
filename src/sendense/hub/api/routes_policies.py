"""Policies, prune, schedules, protected restore points."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt
from sqlalchemy import update

from sendense.common.errors import Conflict, NotFound
from sendense.hub.api.deps import HubDep, require_token
from sendense.hub.db.models import RestorePoint
from sendense.hub.policies import PolicyInfo
from sendense.hub.retention import RULES, KeepRules
from sendense.hub.scheduler import Scheduler

router = APIRouter(prefix="/api/v1", tags=["policies"], dependencies=[Depends(require_token)])


def _scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


SchedulerDep = Annotated[Scheduler, Depends(_scheduler)]


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    keep_last: NonNegativeInt = 0
    keep_hourly: NonNegativeInt = 0
    keep_daily: NonNegativeInt = 0
    keep_weekly: NonNegativeInt = 0
    keep_monthly: NonNegativeInt = 0
    keep_yearly: NonNegativeInt = 0
    max_chain_length: int | None = Field(default=None, ge=1, le=10_000)
    schedule: str | None = Field(default=None, min_length=1, max_length=128)


class PolicyOut(BaseModel):
    name: str
    keep: dict[str, int]
    max_chain_length: int | None
    schedule: str | None
    last_run_at: datetime | None
    assignments: list[tuple[str, str]]


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["vm", "pattern", "folder"]
    value: str = Field(min_length=1, max_length=255)


class PruneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vm: str = Field(min_length=1, max_length=255)
    dry_run: bool = False
    policy: str | None = Field(default=None, max_length=64)


class DecisionOut(BaseModel):
    restore_point_id: str
    at: datetime
    keep: bool
    reason: str


class PruneOut(BaseModel):
    vm: str
    policy: str
    dry_run: bool
    job_id: str | None
    decisions: list[DecisionOut]
    removed: list[str]


class ProtectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    protected: bool = True


class ScheduleOut(BaseModel):
    policy: str
    schedule: str
    last_run_at: datetime | None
    next_run_at: datetime
    vms: list[str]


def _out(p: PolicyInfo) -> PolicyOut:
    return PolicyOut(name=p.name, keep={r: getattr(p.rules, r) for r in RULES},
                     max_chain_length=p.max_chain_length, schedule=p.schedule,
                     last_run_at=p.last_run_at, assignments=p.assignments)  # fmt: skip


@router.post("/policies", status_code=201)
def add_policy(scheduler: SchedulerDep, body: PolicyIn) -> PolicyOut:
    rules = KeepRules(**{r: getattr(body, f"keep_{r}") for r in RULES})
    return _out(scheduler.policies.create(body.name, rules, body.max_chain_length, body.schedule))


@router.get("/policies")
def list_policies(scheduler: SchedulerDep) -> list[PolicyOut]:
    return [_out(p) for p in scheduler.policies.list()]


@router.delete("/policies/{name}", status_code=204)
def delete_policy(scheduler: SchedulerDep, name: str) -> None:
    scheduler.policies.delete(name)


@router.post("/policies/{name}/assignments")
def assign_policy(scheduler: SchedulerDep, name: str, body: AssignIn) -> PolicyOut:
    return _out(scheduler.policies.assign(name, body.kind, body.value))


@router.post("/prune")
def prune(hub: HubDep, scheduler: SchedulerDep, body: PruneIn) -> PruneOut:
    """Show (dry run) or carry out what the VM's policy, or the one named, keeps."""
    vm = hub.queries.vm(body.vm)
    policy = (
        scheduler.policies.get(body.policy) if body.policy
        else scheduler.policies.policy_for(vm.name)
    )  # fmt: skip
    if policy is None:
        raise Conflict(f"VM {vm.name!r} has no policy: assign one, or name one")
    if body.dry_run:
        decisions, removed, job_id = hub.prune.plan(vm.name, policy.rules), [], None
    else:
        result = hub.prune.run(vm.name, policy.rules)
        decisions, removed, job_id = result.decisions, result.removed, result.job_id
    return PruneOut(
        vm=vm.name, policy=policy.name, dry_run=body.dry_run, job_id=job_id, removed=removed,
        decisions=[DecisionOut(restore_point_id=d.id, at=d.at, keep=d.keep, reason=d.reason)
                   for d in decisions],
    )  # fmt: skip


@router.post("/restore-points/{point_id}/protect")
def protect(hub: HubDep, point_id: str, body: ProtectIn) -> dict[str, bool]:
    with hub.db.session() as s:
        done = s.execute(
            update(RestorePoint).where(RestorePoint.id == point_id)
            .values(protected=body.protected)
        )  # fmt: skip
        if getattr(done, "rowcount", 0) != 1:
            raise NotFound(f"restore point {point_id} does not exist")
    return {"protected": body.protected}


@router.get("/schedules")
def schedules(scheduler: SchedulerDep) -> list[ScheduleOut]:
    return [ScheduleOut(**vars(s)) for s in scheduler.schedules()]
