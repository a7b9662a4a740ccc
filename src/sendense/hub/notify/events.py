"""What the notifier tells: tasks that ended, invalid restore points and
conditions (a nearly full repository, a node gone too long, a VM without a recent
backup). Each event is a JSON-able dict with a one-line `summary`, found once
and marked (`NotifyMark`) so that it is never told twice."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sendense.hub.db.models import (
    Job,
    JobState,
    PointStatus,
    RestorePoint,
    RestorePointDisk,
    TaskKind,
    Vm,
)
from sendense.hub.nodes.registry import NodeInfo
from sendense.hub.notify.delivery import Message
from sendense.hub.notify.targets import RuleInfo
from sendense.hub.repository.repositories import RepositoryInfo

Event = dict[str, Any]
DIGEST_LINES = 200  # a digest lists this many events, then counts the rest


def task_events(s: Session, since: datetime) -> list[tuple[str, Event]]:
    """(mark key, event) of every task that completed or failed since `since`."""
    rows = s.execute(
        select(Job, Vm.name)
        .join(Vm, Job.vm_id == Vm.id)
        .where(Job.finished_at >= since, Job.state.in_([JobState.COMPLETE, JobState.FAILED]))
        .order_by(Job.finished_at)
    ).all()
    warned = set(
        s.scalars(
            select(RestorePoint.job_id)
            .join(RestorePointDisk)
            .where(
                RestorePoint.job_id.in_([job.id for job, _ in rows]),
                RestorePointDisk.full_reason.is_not(None),
                RestorePoint.status == PointStatus.COMPLETE,
            )
        )
    )
    found = []
    for job, vm in rows:
        if job.state is JobState.FAILED:
            name, summary = "failed", f"{job.kind} of {vm} failed: {job.error or 'no reason given'}"
        elif job.error:  # complete, with something to say (a verify that found damage)
            name, summary = "warning", f"{job.kind} of {vm} complete: {job.error}"
        elif job.id in warned:
            name, summary = "warning", f"{job.kind} of {vm} complete, some disks read whole"
        else:
            name, summary = "succeeded", f"{job.kind} of {vm} complete"
        event = {
            "event": name,
            "kind": str(job.kind),
            "vm": vm,
            "task": job.id,
            "error": job.error,
            "at": _iso(job.finished_at),
            "summary": summary,
        }
        found.append((f"job:{job.id}", event))
    return found


def invalid_points(s: Session, since: datetime) -> list[tuple[str, Event]]:
    rows = s.execute(
        select(RestorePoint, Vm.name)
        .join(Vm, RestorePoint.vm_id == Vm.id)
        .where(RestorePoint.status == PointStatus.INVALID, RestorePoint.verified_at >= since)
    ).all()
    return [
        (
            f"invalid:{point.id}",
            {
                "event": "invalid_point",
                "kind": str(TaskKind.VERIFY),
                "vm": vm,
                "point": point.id,
                "error": point.verify_error,
                "at": _iso(point.verified_at),
                "summary": f"restore point {point.id} of {vm} is invalid: {point.verify_error}",
            },
        )
        for point, vm in rows
    ]


def condition_events(
    s: Session,
    rule: RuleInfo,
    now: datetime,
    repos: list[RepositoryInfo],
    nodes: list[NodeInfo],
) -> list[tuple[str, Event]]:
    """Events of the conditions `rule` watches that hold now, each keyed by the
    rule and the state it saw (`<rule id>:...`)."""
    found: list[tuple[str, Event]] = []
    at = _iso(now)
    if rule.free_below_percent is not None and "repository_full" in rule.events:
        for repo in repos:
            key = f"{rule.id}:repo:{repo.id}"
            total = repo.capacity.total
            percent = 100.0 * repo.capacity.free / total if total else 100.0
            if percent >= rule.free_below_percent:
                continue
            summary = f"repository {repo.name} has {percent:.1f}% free ({repo.capacity.free} bytes)"
            event = {"event": "repository_full", "repository": repo.name, "free_percent": percent}
            found.append((key, {**event, "at": at, "summary": summary}))
    if rule.node_down_minutes is not None and "node_disconnected" in rule.events:
        for node in nodes:
            if node.revoked or node.connected:
                continue
            last = node.last_seen
            if last is not None and now - last < timedelta(minutes=rule.node_down_minutes):
                continue
            seen = f"last seen {_iso(last)}" if last else "never connected"
            key = f"{rule.id}:node:{node.id}:{_iso(last)}"
            summary = f"node {node.name} is disconnected ({seen})"
            event = {"event": "node_disconnected", "node": node.name, "last_seen": _iso(last)}
            found.append((key, {**event, "at": at, "summary": summary}))
    if rule.max_age_hours is not None and "stale_vm" in rule.events:
        limit = now - timedelta(hours=rule.max_age_hours)
        for vm_id, vm, created, last in last_successes(s):
            if not rule.wants_vm(vm) or (last or created) >= limit:
                continue
            key = f"{rule.id}:stale:{vm_id}:{_iso(last)}"
            since = f"last good backup {_iso(last)}" if last else "no good backup yet"
            summary = f"{vm} has no backup newer than {rule.max_age_hours:g} h ({since})"
            event = {"event": "stale_vm", "vm": vm, "last_success": _iso(last)}
            found.append((key, {**event, "at": at, "summary": summary}))
    return found


def last_successes(s: Session) -> list[tuple[str, str, datetime, datetime | None]]:
    """(VM id, name, when the hub first knew it, completion of its newest
    complete restore point or None)."""
    newest = func.max(RestorePoint.completed_at)
    rows = s.execute(
        select(Vm.id, Vm.name, Vm.created_at, newest)
        .outerjoin(
            RestorePoint,
            (RestorePoint.vm_id == Vm.id) & (RestorePoint.status == PointStatus.COMPLETE),
        )
        .group_by(Vm.id, Vm.name, Vm.created_at)
        .order_by(Vm.name)
    ).all()
    return [(vm_id, name, created, _aware(last)) for vm_id, name, created, last in rows]


def matches(rule: RuleInfo, event: Event) -> bool:
    if event["event"] not in rule.events:
        return False
    if "vm" in event and not rule.wants_vm(event["vm"]):
        return False
    return "task" not in event or rule.wants_kind(event["kind"])


def event_message(event: Event) -> Message:
    what = event["event"].replace("_", " ")
    lines = [event["summary"], ""]
    lines += [f"{k}: {v}" for k, v in sorted(event.items()) if k != "summary" and v is not None]
    subject = f"[Sendense] {what}: {event['summary']}"[:200]
    return Message("event", subject, "\n".join(lines), {"events": [event]})


def digest_message(events: list[Event]) -> Message:
    counts = Counter(e["event"] for e in events)
    tally = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.most_common())
    lines = [f"{len(events)} events: {tally}", ""]
    lines += [f"{e.get('at') or ''}  {e['summary']}" for e in events[:DIGEST_LINES]]
    if len(events) > DIGEST_LINES:
        lines.append(f"... and {len(events) - DIGEST_LINES} more")
    payload = {"events": events[:DIGEST_LINES], "counts": dict(counts)}
    return Message("digest", f"[Sendense] {len(events)} events: {tally}", "\n".join(lines), payload)


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None
