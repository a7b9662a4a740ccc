"""The notifier: each tick it finds what happened since its cursor (kept in the
database), matches it against the rules, queues it per target (`notify_outbox`,
in the same transaction that marks it handled) and delivers the queue.

A restart neither loses nor repeats: what was marked is queued, and a queued
event leaves the queue only once it was sent. A storm sends one digest: a target
gets at most `storm_threshold` single messages per `storm_window_s`; when more
are waiting they go as one digest, and what comes after a digest in the same
window waits for the window's end. A target that failed is tried again after
RETRY_S; events older than DROP_AFTER are dropped (and the drop recorded)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sendense.hub.db.database import Database
from sendense.hub.db.models import NotifyMark, NotifyOutbox, NotifyTarget, Vm, utcnow
from sendense.hub.nodes.registry import NodeInfo
from sendense.hub.notify.delivery import DeliveryFailed, Message
from sendense.hub.notify.events import (
    Event,
    condition_events,
    digest_message,
    event_message,
    invalid_points,
    matches,
    task_events,
)
from sendense.hub.notify.report import daily_report
from sendense.hub.notify.targets import NotificationService, RuleInfo
from sendense.hub.repository.repositories import RepositoryInfo
from sendense.hub.retention.policies import PolicyInfo

log = logging.getLogger(__name__)
CURSOR = "cursor"
# Tasks finished this long before the cursor are read again (a task's finish
# time is written before its transaction commits); their marks tell them apart.
LOOKBACK = timedelta(minutes=10)
KEEP_MARKS = timedelta(days=2)  # task and point marks; condition marks stay while it holds
RETRY_S = 300.0
DROP_AFTER = timedelta(days=1)
LEASE = timedelta(minutes=10)  # longer than a delivery round can take


Report = tuple[RuleInfo, str, Message]  # a daily report: its rule, mark key and message


@dataclass(frozen=True)
class NotifierSettings:
    storm_threshold: int = 10
    storm_window_s: float = 60.0
    daily_report_at: time = time(7, 0)


@dataclass(frozen=True)
class Sources:
    """What the notifier reads besides the database (each may probe something)."""

    repositories: Callable[[], list[RepositoryInfo]]
    nodes: Callable[[], list[NodeInfo]]
    policy_for: Callable[[str], PolicyInfo | None]


class Notifier:
    def __init__(
        self,
        db: Database,
        service: NotificationService,
        sources: Sources,
        zone: tzinfo,
        settings: NotifierSettings | None = None,
        warn_task: Callable[[str, str], None] | None = None,
    ) -> None:
        """`warn_task(task_id, text)` puts a warning in a task's log when a
        notification about it cannot be delivered (once per notification)."""
        self.db = db
        self.warn_task = warn_task
        self._warned: set[int] = set()  # outbox rows whose tasks were told
        self.service = service
        self.sources = sources
        self.zone = zone
        self.settings = settings or NotifierSettings()
        self._lock = threading.Lock()  # one tick at a time

    def tick(self, now: datetime | None = None) -> None:
        with self._lock:
            self._tick(now or utcnow())

    def _tick(self, now: datetime) -> None:
        rules = self.service.rules()
        if rules:
            try:
                self._collect(rules, now, self._due_reports(rules, now))
            except IntegrityError:
                log.info("another hub marked the same events first; reading them again")
        with self.db.session() as s:
            waiting = s.scalars(select(NotifyOutbox.target_id).distinct()).all()
        for target_id in waiting:
            self._deliver(target_id, now)

    def _collect(self, rules: list[RuleInfo], now: datetime, reports: list[Report]) -> None:
        watch = {e for rule in rules for e in rule.events}
        repos = self.sources.repositories() if "repository_full" in watch else []
        nodes = self.sources.nodes() if "node_disconnected" in watch else []
        with self.db.session() as s:
            cursor = s.get(NotifyMark, CURSOR)
            since = (cursor.at if cursor else now) - LOOKBACK
            found = task_events(s, since) + invalid_points(s, since)
            for rule in rules:
                more = condition_events(s, rule, now, repos, nodes)
                found += [(key, dict(event, rule=rule.name)) for key, event in more]
                # A condition that no longer holds is told again when it comes back.
                s.execute(
                    delete(NotifyMark).where(
                        NotifyMark.key.like(f"{rule.id}:%"),
                        NotifyMark.key.not_in([key for key, _ in more]),
                    )
                )
            marked = self._marked(s, [key for key, _ in found])
            for key, event in found:
                if key in marked:
                    continue
                s.add(NotifyMark(key=key, at=now))
                targets = {r.target_id for r in rules if self._wants(r, key, event)}
                for target_id in sorted(targets):
                    s.add(NotifyOutbox(target_id=target_id, event=event, created_at=now))
            for rule, key, message in reports:
                if s.get(NotifyMark, key) is None:
                    s.add(NotifyMark(key=key, at=now))
                    event = {"event": "daily_report", "message": message.__dict__}
                    s.add(NotifyOutbox(target_id=rule.target_id, event=event, created_at=now))
            s.execute(
                delete(NotifyMark).where(
                    NotifyMark.at < now - KEEP_MARKS,
                    NotifyMark.key.like("job:%") | NotifyMark.key.like("invalid:%"),
                )
            )
            if cursor is None:
                s.add(NotifyMark(key=CURSOR, at=now))
            else:
                cursor.at = max(cursor.at, now)

    @staticmethod
    def _wants(rule: RuleInfo, key: str, event: Event) -> bool:
        if key.startswith(("job:", "invalid:")):
            return matches(rule, event)
        return event.get("rule") == rule.name  # a condition is its rule's own

    @staticmethod
    def _marked(s: Session, keys: list[str]) -> set[str]:
        marked: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marked.update(s.scalars(select(NotifyMark.key).where(NotifyMark.key.in_(chunk))))
        return marked

    def _due_reports(self, rules: list[RuleInfo], now: datetime) -> list[Report]:
        """(rule, mark key, report) of the daily reports due: once a day, from
        `daily_report_at` on (the first the day a rule is made, if made later)."""
        local = now.astimezone(self.zone)
        due = datetime.combine(local.date(), self.settings.daily_report_at, tzinfo=self.zone)
        wanted = [r for r in rules if "daily_report" in r.events]
        if local < due or not wanted:
            return []
        keys = {r.id: f"report:{r.id}:{local.date().isoformat()}" for r in wanted}
        with self.db.session() as s:
            done = self._marked(s, list(keys.values()))
            names = s.scalars(select(Vm.name).distinct()).all()
        wanted = [r for r in wanted if keys[r.id] not in done]
        if not wanted:
            return []
        policies = {name: self.sources.policy_for(name) for name in names}
        with self.db.session() as s:
            return [(r, keys[r.id], daily_report(s, r, now, self.zone, policies)) for r in wanted]

    def _deliver(self, target_id: str, now: datetime) -> None:
        if not self._lease(target_id, now, LEASE):
            return  # another hub on this database is delivering to it
        try:
            for message, ids, singles in self._plan(target_id, now):
                try:
                    self.service.deliver(target_id, message)
                except DeliveryFailed as exc:
                    self._tell_tasks(ids, exc.message)
                    return  # logged and recorded on the target; tried again after RETRY_S
                except Exception:
                    log.exception("notification not delivered to target %s", target_id)
                    return
                with self.db.session() as s:
                    s.execute(delete(NotifyOutbox).where(NotifyOutbox.id.in_(ids)))
                    target = s.get(NotifyTarget, target_id)
                    if target is not None:
                        target.window_count = (target.window_count or 0) + singles
        finally:
            self._lease(target_id, now, None)

    def _tell_tasks(self, outbox_ids: list[int], why: str) -> None:
        new = [i for i in outbox_ids if i not in self._warned]
        if self.warn_task is None or not new:
            return
        with self.db.session() as s:
            rows = s.execute(
                select(NotifyOutbox.event, NotifyTarget.name)
                .join(NotifyTarget, NotifyTarget.id == NotifyOutbox.target_id)
                .where(NotifyOutbox.id.in_(new))
            ).all()
        self._warned.update(new)
        if len(self._warned) > 100_000:  # a day of storms: forget, at worst warn twice
            self._warned = set(new)
        for event, target in rows:
            task_id = event.get("task")
            if isinstance(task_id, str):
                try:
                    self.warn_task(task_id, f"notification to target {target} not delivered: {why}")
                except (OSError, ValueError):
                    log.warning("task %s: its log did not take the notification warning", task_id)

    def _lease(self, target_id: str, now: datetime, length: timedelta | None) -> bool:
        """Take the target's lease for `length` (None: give it back) by a
        conditional UPDATE; False when another hub holds it."""
        me = self.db.owner or "hub"
        mine = NotifyTarget.lease_owner == me
        change = update(NotifyTarget).where(NotifyTarget.id == target_id)
        if length is None:
            change = change.where(mine).values(lease_owner=None, lease_until=None)
        else:
            free = NotifyTarget.lease_until.is_(None) | (NotifyTarget.lease_until < utcnow())
            until = max(now, utcnow()) + length
            change = change.where(free | mine).values(lease_owner=me, lease_until=until)
        with self.db.session() as s:
            return bool(s.execute(change).rowcount)  # type: ignore[attr-defined]

    def _plan(self, target_id: str, now: datetime) -> list[tuple[Message, list[int], int]]:
        """(message, outbox rows it carries, singles it counts in the window)."""
        threshold = self.settings.storm_threshold
        with self.db.session() as s:
            target = s.get(NotifyTarget, target_id)
            if target is None:
                return []
            if (
                target.last_error_at is not None
                and (target.last_sent_at is None or target.last_sent_at < target.last_error_at)
                and (now - target.last_error_at).total_seconds() < RETRY_S
            ):
                return []  # failing: try again later
            stale = s.execute(
                delete(NotifyOutbox).where(
                    NotifyOutbox.target_id == target_id, NotifyOutbox.created_at < now - DROP_AFTER
                )
            ).rowcount  # type: ignore[attr-defined]
            if stale:
                target.last_error = f"{stale} notifications dropped: undelivered for a day"
                target.last_error_at = now
            rows = s.scalars(
                select(NotifyOutbox)
                .where(NotifyOutbox.target_id == target_id)
                .order_by(NotifyOutbox.id)
            ).all()
            window = timedelta(seconds=self.settings.storm_window_s)
            if target.window_start is None or now - target.window_start >= window:
                target.window_start, target.window_count = now, 0
            plan: list[tuple[Message, list[int], int]] = []
            events: list[tuple[int, dict[str, Any]]] = []
            for row in rows:
                if row.event.get("event") == "daily_report":
                    plan.append((Message(**row.event["message"]), [row.id], 0))
                else:
                    events.append((row.id, row.event))
            budget = threshold - target.window_count
            if len(events) <= budget:
                plan += [(event_message(e), [i], 1) for i, e in events]
            elif target.window_count == 0:
                ids = [i for i, _ in events]
                plan.append((digest_message([e for _, e in events]), ids, threshold))
            # else: singles were sent in this window already; the rest waits for its end
            return plan
