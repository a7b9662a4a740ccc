"""Notifications: where they go, which events go where, what waits to be sent and
what the notifier has handled."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sendense.hub.db.models.base import Base, UtcDateTime, new_id, utcnow


class NotifyTarget(Base):
    """Where notifications go: an SMTP server (`config`: host, port, security,
    username, sender, recipients) or a webhook (`config`: url). `secret_sealed`:
    the SMTP password or the webhook's HMAC key, sealed with secret.key."""

    __tablename__ = "notify_targets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # smtp | webhook
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secret_sealed: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The last delivery that failed (never with the secret): a warning the API shows.
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Storm control: single messages sent since `window_start` (one window long).
    window_start: Mapped[datetime | None] = mapped_column(UtcDateTime())
    window_count: Mapped[int] = mapped_column(Integer, default=0)
    # The hub delivering to it now (hubs sharing one database never both send).
    lease_owner: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


class NotifyRule(Base):
    """Which events go to a target: event names, a VM name pattern, task kinds,
    and the thresholds of the condition events."""

    __tablename__ = "notify_rules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("notify_targets.id", ondelete="CASCADE"))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    vm_pattern: Mapped[str] = mapped_column(String(255), default="*")
    kinds: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: every kind
    free_below_percent: Mapped[float | None] = mapped_column(Float)
    node_down_minutes: Mapped[float | None] = mapped_column(Float)
    max_age_hours: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class NotifyOutbox(Base):
    """An event matched to a target and not delivered yet: written in the same
    transaction that marks the event handled, deleted once sent."""

    __tablename__ = "notify_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("notify_targets.id", ondelete="CASCADE"))
    event: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class NotifyMark(Base):
    """What the notifier has handled, so a restart neither loses nor repeats it:
    `job:<id>` per finished task, `<rule>:<condition>` per condition event,
    `report:<rule>:<date>` per daily report, and `cursor` (the finish time up
    to which tasks were read, in `at`)."""

    __tablename__ = "notify_marks"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
