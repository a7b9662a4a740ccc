"""The daily report: per VM its last good backup (when, its age against its
policy's schedule, size, duration), then every task that failed that day."""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sendense.hub.db.models import Job, JobState, PointStatus, RestorePoint, RestorePointDisk, Vm
from sendense.hub.notify.delivery import Message
from sendense.hub.notify.targets import RuleInfo
from sendense.hub.retention.policies import PolicyInfo, on_schedule


def daily_report(
    s: Session,
    rule: RuleInfo,
    now: datetime,
    zone: tzinfo,
    policies: dict[str, PolicyInfo | None],
) -> Message:
    """`policies`: each VM's policy by its name (looked up before: one session at a time)."""
    local = now.astimezone(zone)
    day_start = local - timedelta(days=1)
    lines = [f"Sendense daily report, {local:%Y-%m-%d %H:%M %Z}", "", "Last good backup per VM:"]
    vms = []
    for vm_id, name in s.execute(select(Vm.id, Vm.name).order_by(Vm.name)).all():
        if rule.wants_vm(name):
            vms.append(name)
            lines.append("  " + _vm_line(s, vm_id, name, now, zone, policies.get(name)))
    if not vms:
        lines.append("  (no VM)")
    failed = s.execute(
        select(Job, Vm.name)
        .join(Vm, Job.vm_id == Vm.id)
        .where(Job.state == JobState.FAILED, Job.finished_at >= day_start)
        .order_by(Job.finished_at)
    ).all()
    failures = [(job, vm) for job, vm in failed if rule.wants_vm(vm)]
    lines += ["", f"Failures in the 24 hours since {day_start:%Y-%m-%d %H:%M}: {len(failures)}"]
    for job, vm in failures:
        when = job.finished_at.astimezone(zone) if job.finished_at else local
        lines.append(f"  {when:%H:%M:%S}  {job.kind} of {vm}: {job.error or 'no reason given'}")
    payload = {"vms": vms, "failures": len(failures), "date": f"{local:%Y-%m-%d}"}
    subject = f"[Sendense] daily report {local:%Y-%m-%d}: {len(failures)} failures"
    return Message("report", subject, "\n".join(lines), payload)


def _vm_line(
    s: Session,
    vm_id: str,
    name: str,
    now: datetime,
    zone: tzinfo,
    policy: PolicyInfo | None,
) -> str:
    found = s.execute(
        select(RestorePoint, Job)
        .join(Job, RestorePoint.job_id == Job.id)
        .where(RestorePoint.vm_id == vm_id, RestorePoint.status == PointStatus.COMPLETE)
        .order_by(RestorePoint.completed_at.desc())
        .limit(1)
    ).first()
    if found is None:
        return f"{name}: no good backup{_schedule(policy, None, now, zone)}"
    point, job = found
    done = point.completed_at or point.created_at
    size = s.scalar(
        select(func.sum(RestorePointDisk.data_bytes)).where(
            RestorePointDisk.restore_point_id == point.id
        )
    )
    took = (
        f"{(job.finished_at - job.started_at).total_seconds():.0f} s"
        if job.finished_at and job.started_at
        else "-"
    )
    return (
        f"{name}: last success {done.astimezone(zone):%Y-%m-%d %H:%M}, "
        f"age {_age(now - done)}, size {size or 0} bytes, duration {took}"
        f"{_schedule(policy, done, now, zone)}"
    )


def _schedule(policy: PolicyInfo | None, done: datetime | None, now: datetime, zone: tzinfo) -> str:
    """`, policy P (cron): on schedule` or `overdue`: overdue when the backup is
    older than the run before the schedule's latest one (a whole run missed)."""
    kept_up = on_schedule(policy, done, now, zone)
    if policy is None or kept_up is None:
        return ""
    state = "on schedule" if kept_up else "overdue"
    return f", policy {policy.name} ({policy.schedule}): {state}"


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"
