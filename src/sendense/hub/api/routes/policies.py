"""/api/v1/policies: retention rules, maximum chain length and schedule, and
which VMs each covers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from sendense.hub.api.deps import HubDep, authorize
from sendense.hub.retention.policies import PolicyInfo
from sendense.hub.retention.rules import RULES, KeepRules

router = APIRouter(prefix="/api/v1/policies", tags=["policies"], dependencies=[Depends(authorize)])


# Bounded: a count past the database's 64-bit integers was a 500.
KeepCount = Annotated[int, Field(ge=0, le=1_000_000)]


class PolicyRulesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_last: KeepCount = 0
    keep_hourly: KeepCount = 0
    keep_daily: KeepCount = 0
    keep_weekly: KeepCount = 0
    keep_monthly: KeepCount = 0
    keep_yearly: KeepCount = 0
    max_chain_length: int | None = Field(default=None, ge=1, le=10_000)
    schedule: str | None = Field(default=None, min_length=1, max_length=128)


class PolicyIn(PolicyRulesIn):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")


class PolicyOut(BaseModel):
    name: str
    keep: dict[str, int]
    max_chain_length: int | None
    schedule: str | None
    last_run_at: datetime | None
    # Each [kind, value]. A list of two rather than a tuple: a tuple's `prefixItems`
    # is valid OpenAPI 3.1, but schemathesis 4.32 rewrites it into an invalid schema.
    assignments: list[Annotated[list[str], Field(min_length=2, max_length=2)]]


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["vm", "pattern", "folder"]
    value: str = Field(min_length=1, max_length=255)


def _out(p: PolicyInfo) -> PolicyOut:
    return PolicyOut(
        name=p.name,
        keep={r: getattr(p.rules, r) for r in RULES},
        max_chain_length=p.max_chain_length,
        schedule=p.schedule,
        last_run_at=p.last_run_at,
        assignments=[list(a) for a in p.assignments],
    )


@router.post("", status_code=201)
def add_policy(hub: HubDep, body: PolicyIn) -> PolicyOut:
    return _out(hub.policies.create(body.name, _rules(body), body.max_chain_length, body.schedule))


@router.put("/{name}")
def change_policy(hub: HubDep, name: str, body: PolicyRulesIn) -> PolicyOut:
    """New keep rules, chain length and schedule; the policy's VMs stay assigned."""
    return _out(hub.policies.update(name, _rules(body), body.max_chain_length, body.schedule))


def _rules(body: PolicyRulesIn) -> KeepRules:
    return KeepRules(**{r: getattr(body, f"keep_{r}") for r in RULES})


@router.get("")
def list_policies(hub: HubDep) -> list[PolicyOut]:
    return [_out(p) for p in hub.policies.list()]


@router.delete("/{name}", status_code=204)
def delete_policy(hub: HubDep, name: str) -> None:
    hub.policies.delete(name)


@router.post("/{name}/assignments")
def assign_policy(hub: HubDep, name: str, body: AssignIn) -> PolicyOut:
    return _out(hub.policies.assign(name, body.kind, body.value))
