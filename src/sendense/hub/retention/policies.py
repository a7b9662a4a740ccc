"""Policies: retention rules, a maximum chain length and a schedule, assigned to VMs
by name, by name pattern (fnmatch) or by vCenter folder (inventory path prefix).

A VM takes the policy of its own assignment, else of the longest matching folder,
else of the first matching pattern (by pattern, for a stable answer).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime, tzinfo

from cronsim import CronSim, CronSimError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from sendense.common.errors import Conflict, InvalidInput, NotFound
from sendense.hub.db.database import Database
from sendense.hub.db.models import Policy, PolicyAssignment, Vm
from sendense.hub.retention.rules import RULES, KeepRules

KINDS = ("vm", "pattern", "folder")


@dataclass(frozen=True)
class PolicyInfo:
    id: str
    name: str
    rules: KeepRules
    max_chain_length: int | None
    schedule: str | None
    last_run_at: datetime | None
    created_at: datetime
    assignments: list[tuple[str, str]]


def check_schedule(expression: str) -> None:
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise InvalidInput(f"invalid cron expression {expression!r}: {exc}") from None


def next_run(expression: str, after: datetime, zone: tzinfo) -> datetime:
    """The first time the schedule fires after `after`, in `zone`'s wall-clock time."""
    return next(CronSim(expression, after.astimezone(zone)))


def _info(row: Policy) -> PolicyInfo:
    rules = KeepRules(**{r: getattr(row, f"keep_{r}") for r in RULES})
    return PolicyInfo(
        row.id,
        row.name,
        rules,
        row.max_chain_length,
        row.schedule,
        row.last_run_at,
        row.created_at,
        sorted((a.kind, a.value) for a in row.assignments),
    )


class PolicyService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, name: str, rules: KeepRules, max_chain_length: int | None, schedule: str | None
    ) -> PolicyInfo:
        if schedule is not None:
            check_schedule(schedule)
        row = Policy(
            name=name,
            max_chain_length=max_chain_length,
            schedule=schedule,
            **{f"keep_{r}": getattr(rules, r) for r in RULES},
        )
        try:
            with self.db.session() as s:
                s.add(row)
        except IntegrityError:
            raise Conflict(f"a policy named {name!r} exists") from None
        return self.get(name)

    def update(
        self, name: str, rules: KeepRules, max_chain_length: int | None, schedule: str | None
    ) -> PolicyInfo:
        """New rules, chain length and schedule for an existing policy (its VMs stay)."""
        if schedule is not None:
            check_schedule(schedule)
        with self.db.session() as s:
            row = s.scalars(select(Policy).where(Policy.name == name)).first()
            if row is None:
                raise NotFound(f"no policy named {name!r}")
            row.max_chain_length = max_chain_length
            row.schedule = schedule
            for r in RULES:
                setattr(row, f"keep_{r}", getattr(rules, r))
        return self.get(name)

    def get(self, name: str) -> PolicyInfo:
        with self.db.session() as s:
            row = s.scalars(
                select(Policy).options(selectinload(Policy.assignments)).where(Policy.name == name)
            ).first()
            if row is None:
                raise NotFound(f"no policy named {name!r}")
            return _info(row)

    def list(self) -> list[PolicyInfo]:
        with self.db.session() as s:
            rows = s.scalars(
                select(Policy).options(selectinload(Policy.assignments)).order_by(Policy.name)
            ).all()
            return [_info(r) for r in rows]

    def delete(self, name: str) -> None:
        with self.db.session() as s:
            row = s.scalars(select(Policy).where(Policy.name == name)).first()
            if row is None:
                raise NotFound(f"no policy named {name!r}")
            s.delete(row)

    def assign(self, name: str, kind: str, value: str) -> PolicyInfo:
        if kind not in KINDS:
            raise InvalidInput(f"assign by one of {', '.join(KINDS)}, not {kind!r}")
        with self.db.session() as s:
            policy = s.scalars(select(Policy).where(Policy.name == name)).first()
            if policy is None:
                raise NotFound(f"no policy named {name!r}")
            if kind == "vm" and s.scalars(select(Vm.id).where(Vm.name == value)).first() is None:
                raise NotFound(f"VM {value!r} is not known to the hub (back it up once first)")
            existing = s.scalars(
                select(PolicyAssignment).where(
                    PolicyAssignment.kind == kind, PolicyAssignment.value == value
                )
            ).first()
            if existing is not None:
                existing.policy_id = policy.id  # one policy per VM, pattern or folder
            else:
                s.add(PolicyAssignment(policy_id=policy.id, kind=kind, value=value))
        return self.get(name)

    def policy_for(self, vm_name: str, folder: str | None = None) -> PolicyInfo | None:
        return matching_policy(self.list(), vm_name, folder)

    def mark_run(self, name: str, when: datetime) -> None:
        with self.db.session() as s:
            row = s.scalars(select(Policy).where(Policy.name == name)).first()
            if row is not None:
                row.last_run_at = when


def matching_policy(
    policies: list[PolicyInfo], vm_name: str, folder: str | None = None
) -> PolicyInfo | None:
    """The policy of a VM among `policies`: one naming the VM, else the deepest
    folder holding it, else a name pattern."""
    best: tuple[int, PolicyInfo] | None = None
    for policy in policies:
        for kind, value in policy.assignments:
            if kind == "vm" and value == vm_name:
                rank = 1_000_000
            elif kind == "folder" and folder and f"{folder}/".startswith(f"{value.rstrip('/')}/"):
                rank = 1_000 + len(value)
            elif kind == "pattern" and fnmatch.fnmatchcase(vm_name, value):
                rank = 1
            else:
                continue
            if best is None or rank > best[0]:
                best = (rank, policy)
    return best[1] if best else None


def on_schedule(
    policy: PolicyInfo | None, done: datetime | None, now: datetime, zone: tzinfo
) -> bool | None:
    """Whether the last good backup (`done`) keeps up with the policy's schedule:
    not when it is older than the run before the schedule's latest one (a whole
    run missed). None for a VM with no scheduled policy."""
    before = run_before_latest(policy, now, zone)
    if before is None:
        return None
    return done is not None and done >= before


def run_before_latest(policy: PolicyInfo | None, now: datetime, zone: tzinfo) -> datetime | None:
    """The scheduled run before the latest one (which may still be going); None
    without a schedule."""
    if policy is None or not policy.schedule:
        return None
    runs = CronSim(policy.schedule, now.astimezone(zone), reverse=True)
    next(runs)
    return next(runs)
