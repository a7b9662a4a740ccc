"""The repositories (directories that hold restore points' files) and the daily
samples of their space."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sendense.hub.db.models.base import Base, UtcDateTime, new_id, utcnow


class Repository(Base):
    __tablename__ = "repositories"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class RepositoryUsageSample(Base):
    """A repository's space on one day (in the hub's time zone), written by
    housekeeping: at most one row per repository and day, the day's first sample
    kept. `backup_bytes`: what its restore points' files took (None: not known)."""

    __tablename__ = "repository_usage_samples"
    __table_args__ = (
        UniqueConstraint("repository_id", "day", name="uq_repository_usage_samples_repo_day"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repository_id: Mapped[str] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    day: Mapped[date] = mapped_column(Date, index=True)
    used_bytes: Mapped[int] = mapped_column(BigInteger)
    free_bytes: Mapped[int] = mapped_column(BigInteger)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    backup_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sampled_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
