"""/api/v1/prune: show (dry run) or carry out what a VM's policy keeps."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from sendense.common.errors import Conflict
from sendense.hub.api.deps import HubDep, PrincipalDep, QueriesDep, authorize

router = APIRouter(prefix="/api/v1/prune", tags=["policies"], dependencies=[Depends(authorize)])


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


@router.post("")
def prune(hub: HubDep, principal: PrincipalDep, queries: QueriesDep, body: PruneIn) -> PruneOut:
    """Show (dry run) or carry out what the VM's policy, or the one named, keeps."""
    vm = queries.vm(body.vm)
    policy = hub.policies.get(body.policy) if body.policy else hub.policies.policy_for(vm.name)
    if policy is None:
        raise Conflict(f"VM {vm.name!r} has no policy: assign one, or name one")
    if body.dry_run:
        decisions, removed, task_id = hub.prune.plan(vm.id, policy.rules), [], None
    else:
        result = hub.prune.run(vm.id, policy.rules)
        decisions, removed, task_id = result.decisions, result.removed, result.job_id
        if task_id is not None:
            hub.tasks.attribute(task_id, principal.starter)
    return PruneOut(
        vm=vm.name,
        policy=policy.name,
        dry_run=body.dry_run,
        job_id=task_id,
        removed=removed,
        decisions=[
            DecisionOut(restore_point_id=d.id, at=d.at, keep=d.keep, reason=d.reason)
            for d in decisions
        ],
    )
