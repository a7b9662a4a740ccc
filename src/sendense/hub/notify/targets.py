"""Notification targets and rules: stored, listed, removed. A target's secret
(the SMTP password, the webhook's HMAC key) is sealed with secret.key; the
webhook key is made here and shown once, when the target is created."""

from __future__ import annotations

import fnmatch
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from sendense.common.errors import Conflict, InvalidInput, NotFound
from sendense.common.tls import ca_context, is_loopback
from sendense.hub.auth.secrets import SecretBox
from sendense.hub.db.database import Database
from sendense.hub.db.models import NotifyRule, NotifyTarget, TaskKind, utcnow
from sendense.hub.notify.delivery import WEBHOOK_TRIES, DeliveryFailed, Message, send

log = logging.getLogger(__name__)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SECURITY = ("starttls", "tls", "none")
ADDRESS = re.compile(r"^[^@\s<>,;\x00-\x1f]+@[^@\s<>,;\x00-\x1f]+$")
# Task events (filtered by kind), then condition events, then the daily report.
TASK_EVENTS = ("failed", "warning", "succeeded")
EVENTS = (
    *TASK_EVENTS,
    "invalid_point",
    "repository_full",
    "node_disconnected",
    "stale_vm",
    "daily_report",
)
# The threshold each condition event needs.
THRESHOLDS = {
    "repository_full": "free_below_percent",
    "node_disconnected": "node_down_minutes",
    "stale_vm": "max_age_hours",
}


@dataclass(frozen=True)
class TargetInfo:
    id: str
    name: str
    kind: str
    config: dict[str, Any]
    created_at: datetime
    last_sent_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


@dataclass(frozen=True)
class RuleInfo:
    id: str
    name: str
    target: str
    target_id: str
    events: list[str]
    vm_pattern: str
    kinds: list[str]
    free_below_percent: float | None
    node_down_minutes: float | None
    max_age_hours: float | None

    def wants_vm(self, vm: str) -> bool:
        return fnmatch.fnmatchcase(vm, self.vm_pattern)

    def wants_kind(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str
    sender: str
    recipients: list[str]
    username: str | None = None
    # A CA file (or the server's own certificate) on the hub; else the system's CAs.
    ca_file: str | None = None


def _target_info(row: NotifyTarget) -> TargetInfo:
    return TargetInfo(
        row.id,
        row.name,
        row.kind,
        dict(row.config),
        row.created_at,
        row.last_sent_at,
        row.last_error,
        row.last_error_at,
    )


def _check_name(name: str, what: str) -> None:
    if not NAME.match(name):
        raise InvalidInput(f"{what} name {name!r}: letters, digits, '.', '_', '-' (64 at most)")


def check_smtp(config: SmtpConfig, password: str | None) -> None:
    if config.security not in SECURITY:
        raise InvalidInput(f"SMTP security {config.security!r}: use one of {', '.join(SECURITY)}")
    if not 1 <= config.port <= 65535:
        raise InvalidInput(f"SMTP port {config.port} is not a port")
    addresses = [config.sender, *config.recipients]
    if not config.recipients or not all(ADDRESS.match(a) for a in addresses):
        raise InvalidInput("an SMTP target needs a sender and recipients as mail addresses")
    if bool(config.username) != bool(password):
        raise InvalidInput("an SMTP login needs both a user name and a password")
    if config.username and config.security == "none" and not is_loopback(config.host):
        raise InvalidInput("an SMTP login without TLS is only allowed to a loopback relay")
    if config.ca_file:
        if config.security == "none" or not Path(config.ca_file).is_absolute():
            raise InvalidInput("ca_file: an absolute path, for starttls or tls")
        ca_context(Path(config.ca_file))


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("a webhook URL must be http:// or https:// with a host")


class NotificationService:
    def __init__(self, db: Database, box: SecretBox, webhook_backoff_s: float = 1.0) -> None:
        self.db = db
        self.box = box
        self.webhook_backoff_s = webhook_backoff_s

    def add_smtp(self, name: str, config: SmtpConfig, password: str | None) -> TargetInfo:
        _check_name(name, "target")
        check_smtp(config, password)
        stored = {k: v for k, v in config.__dict__.items() if v is not None}
        return self._add(name, "smtp", stored, password)

    def add_webhook(self, name: str, url: str) -> tuple[TargetInfo, str]:
        """The target and its HMAC key: shown this once, sealed from now on."""
        _check_name(name, "target")
        check_url(url)
        key = secrets.token_urlsafe(32)
        return self._add(name, "webhook", {"url": url}, key), key

    def _add(self, name: str, kind: str, config: dict[str, Any], secret: str | None) -> TargetInfo:
        sealed = self.box.seal(secret) if secret else None
        try:
            with self.db.session() as s:
                row = NotifyTarget(name=name, kind=kind, config=config, secret_sealed=sealed)
                row.window_count = 0
                s.add(row)
                s.flush()
                return _target_info(row)
        except IntegrityError as exc:
            raise Conflict(f"notification target {name!r} exists already") from exc

    def targets(self) -> list[TargetInfo]:
        with self.db.session() as s:
            rows = s.scalars(select(NotifyTarget).order_by(NotifyTarget.name)).all()
            return [_target_info(r) for r in rows]

    def remove_target(self, name: str) -> TargetInfo:
        """The target and its rules (and what it had not sent yet)."""
        with self.db.session() as s:
            row = self._target(s, name)
            info = _target_info(row)
            for rule in s.scalars(select(NotifyRule).where(NotifyRule.target_id == row.id)):
                s.delete(rule)
            s.delete(row)
        return info

    @staticmethod
    def _target(s: Any, name: str) -> NotifyTarget:
        row = s.scalars(select(NotifyTarget).where(NotifyTarget.name == name)).first()
        if row is None:
            raise NotFound(f"no notification target named {name!r}")
        return row  # type: ignore[no-any-return]

    def deliver(self, target_id: str, message: Message, tries: int = WEBHOOK_TRIES) -> None:
        """Send now, and record the outcome on the target: its last error (a
        warning the API lists) or its last success. Raises DeliveryFailed."""
        with self.db.session() as s:
            row = s.get_one(NotifyTarget, target_id)
            name, kind, config, sealed = row.name, row.kind, dict(row.config), row.secret_sealed
        secret = self.box.open(sealed) if sealed else None
        try:
            send(kind, config, secret, message, self.webhook_backoff_s, tries)
        except DeliveryFailed as exc:
            log.warning("%s to target %s not delivered: %s", message.kind, name, exc.message)
            self._record(target_id, exc.message)
            raise
        self._record(target_id, None)

    def _record(self, target_id: str, error: str | None) -> None:
        with self.db.session() as s:
            row = s.get(NotifyTarget, target_id)
            if row is None:
                return
            if error is None:
                row.last_sent_at = utcnow()
            else:
                row.last_error, row.last_error_at = error, utcnow()

    def test(self, name: str) -> TargetInfo:
        with self.db.session() as s:
            target_id = self._target(s, name).id
        text = f"This is a test message from the Sendense hub to the target {name!r}."
        # Once, at once: an operator waiting on the button wants the answer, not
        # a minute of retries (a webhook that does not answer: 10 s, not 47).
        self.deliver(target_id, Message("test", "[Sendense] test message", text), tries=1)
        return next(t for t in self.targets() if t.id == target_id)

    def add_rule(
        self,
        name: str,
        target: str,
        events: list[str],
        vm_pattern: str = "*",
        kinds: list[str] | None = None,
        thresholds: dict[str, float | None] | None = None,
    ) -> RuleInfo:
        _check_name(name, "rule")
        limits = {k: v for k, v in (thresholds or {}).items() if v is not None}
        if not events:
            raise InvalidInput("a rule needs at least one event")
        for event in events:
            if event not in EVENTS:
                raise InvalidInput(f"unknown event {event!r}: use {', '.join(EVENTS)}")
            needed = THRESHOLDS.get(event)
            if needed and needed not in limits:
                raise InvalidInput(f"the event {event} needs {needed}")
        for value in limits.values():
            if value <= 0:
                raise InvalidInput("thresholds must be above 0")
        known = {k.value for k in TaskKind}
        for kind in kinds or []:
            if kind not in known:
                raise InvalidInput(f"unknown task kind {kind!r}: use {', '.join(sorted(known))}")
        try:
            with self.db.session() as s:
                row = NotifyRule(
                    name=name,
                    target_id=self._target(s, target).id,
                    events=sorted(set(events)),
                    vm_pattern=vm_pattern or "*",
                    kinds=sorted(set(kinds or [])),
                    **limits,
                )
                s.add(row)
                s.flush()
        except IntegrityError as exc:
            raise Conflict(f"notification rule {name!r} exists already") from exc
        return next(r for r in self.rules() if r.name == name)

    def rules(self) -> list[RuleInfo]:
        with self.db.session() as s:
            rows = s.execute(
                select(NotifyRule, NotifyTarget.name).join(NotifyTarget).order_by(NotifyRule.name)
            ).all()
            return [
                RuleInfo(
                    r.id,
                    r.name,
                    target,
                    r.target_id,
                    list(r.events),
                    r.vm_pattern,
                    list(r.kinds),
                    r.free_below_percent,
                    r.node_down_minutes,
                    r.max_age_hours,
                )
                for r, target in rows
            ]

    def remove_rule(self, name: str) -> RuleInfo:
        info = next((r for r in self.rules() if r.name == name), None)
        if info is None:
            raise NotFound(f"no notification rule named {name!r}")
        with self.db.session() as s:
            s.execute(delete(NotifyRule).where(NotifyRule.id == info.id))
        return info
