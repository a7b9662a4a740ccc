"""Retention policies (keep rules, chain length, schedule) and the VMs they are
assigned to."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from sendense.hub.db.models.base import Base, UtcDateTime, new_id, utcnow


class Policy(Base):
    """Retention rules (Proxmox Backup Server style), a maximum chain length and a
    cron schedule, assigned to VMs by name, name pattern or vCenter folder."""

    __tablename__ = "policies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    keep_last: Mapped[int] = mapped_column(Integer, default=0)
    keep_hourly: Mapped[int] = mapped_column(Integer, default=0)
    keep_daily: Mapped[int] = mapped_column(Integer, default=0)
    keep_weekly: Mapped[int] = mapped_column(Integer, default=0)
    keep_monthly: Mapped[int] = mapped_column(Integer, default=0)
    keep_yearly: Mapped[int] = mapped_column(Integer, default=0)
    max_chain_length: Mapped[int | None] = mapped_column(Integer)
    schedule: Mapped[str | None] = mapped_column(String(128))
    last_run_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    assignments: Mapped[list[PolicyAssignment]] = relationship(
        back_populates="policy", cascade="all, delete-orphan"
    )


class PolicyAssignment(Base):
    __tablename__ = "policy_assignments"
    __table_args__ = (UniqueConstraint("kind", "value", name="uq_policy_assignments_kind_value"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    policy_id: Mapped[str] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # vm | pattern | folder
    value: Mapped[str] = mapped_column(String(255))

    policy: Mapped[Policy] = relationship(back_populates="assignments")
