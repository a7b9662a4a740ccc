"""What the dashboard shows, read in a handful of queries whatever the number of
VMs and restore points: each VM's last good backup, its last backup task, its
policy and whether it keeps up with the schedule; the last day's failures; the
tasks running now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select

from sendense.hub.db.models import (
    ACTIVE_JOB_STATES,
    Job,
    JobState,
    PointStatus,
    RestorePoint,
    TaskKind,
    Vm,
)
from sendense.hub.retention.policies import PolicyInfo, matching_policy, run_before_latest
from sendense.hub.service import Hub


@dataclass(frozen=True)
class VmState:
    id: str
    name: str
    policy: str | None
    points: int
    last_good: datetime | None
    last_task_state: str | None
    # "on time", "late", "failed", "running", "no schedule" or "unprotected"
    state: str


@dataclass(frozen=True)
class Failure:
    task_id: str
    kind: str
    vm: str | None
    error: str | None
    finished_at: datetime | None


@dataclass(frozen=True)
class Overview:
    vms: list[VmState]
    failures: list[Failure]
    running: list[Failure]

    def count(self, state: str) -> int:
        return sum(1 for v in self.vms if v.state == state)


def _state(
    policy: PolicyInfo | None,
    last_good: datetime | None,
    last_task: str | None,
    previous_run: datetime | None,
) -> str:
    if last_task in {s.value for s in ACTIVE_JOB_STATES}:
        return "running"
    if policy is None:
        return "unprotected"
    if last_task == JobState.FAILED.value:
        return "failed"
    if previous_run is None:
        return "no schedule"
    return "on time" if last_good is not None and last_good >= previous_run else "late"


def overview(hub: Hub, now: datetime | None = None) -> Overview:
    now = now or datetime.now(UTC)
    zone = ZoneInfo(hub.settings.time_zone)
    policies = hub.policies.list()
    with hub.db.session() as s:
        vms = s.execute(select(Vm.id, Vm.name).order_by(Vm.name)).all()
        good = dict(
            (vm_id, (last, n))
            for vm_id, last, n in s.execute(
                select(RestorePoint.vm_id, func.max(RestorePoint.created_at), func.count())
                .where(RestorePoint.status == PointStatus.COMPLETE)
                .group_by(RestorePoint.vm_id)
            )
        )
        newest = (
            select(Job.vm_id, func.max(Job.created_at).label("at"))
            .where(Job.kind == TaskKind.BACKUP)
            .group_by(Job.vm_id)
            .subquery()
        )
        last_task = {
            vm_id: state.value
            for vm_id, state in s.execute(
                select(Job.vm_id, Job.state).join(
                    newest,
                    and_(
                        Job.vm_id == newest.c.vm_id,
                        Job.kind == TaskKind.BACKUP,
                        Job.created_at == newest.c.at,
                    ),
                )
            )
        }
        names = {vm_id: name for vm_id, name in vms}
        failed = s.execute(
            select(Job.id, Job.kind, Job.vm_id, Job.error, Job.finished_at)
            .where(Job.state == JobState.FAILED, Job.finished_at >= now - timedelta(days=1))
            .order_by(Job.finished_at.desc())
            .limit(50)
        ).all()
        running = s.execute(
            select(Job.id, Job.kind, Job.vm_id, Job.error, Job.started_at)
            .where(Job.state.in_(ACTIVE_JOB_STATES), Job.kind != TaskKind.ACCESS)
            .order_by(Job.created_at)
            .limit(50)
        ).all()
    before = {p.name: run_before_latest(p, now, zone) for p in policies}
    states = []
    for vm_id, name in vms:
        policy = matching_policy(policies, name)
        last_good, count = good.get(vm_id, (None, 0))
        task = last_task.get(vm_id)
        states.append(
            VmState(
                vm_id,
                name,
                policy.name if policy else None,
                count,
                last_good,
                task,
                _state(policy, last_good, task, before[policy.name] if policy else None),
            )
        )
    return Overview(
        states,
        [Failure(i, k.value, names.get(v) if v else None, e, f) for i, k, v, e, f in failed],
        [Failure(i, k.value, names.get(v) if v else None, e, f) for i, k, v, e, f in running],
    )
