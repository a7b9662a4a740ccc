"""The NBD ports the hub hands out and the exports (qemu-nbd processes) it serves
on them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sendense.hub.db.models.base import Base, UtcDateTime, new_id, utcnow


class NbdPort(Base):
    """One row per allocated port; the primary key makes double allocation impossible."""

    __tablename__ = "nbd_ports"

    port: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    disk_key: Mapped[int | None] = mapped_column(Integer)
    owner: Mapped[str] = mapped_column(String(64))
    allocated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class NbdExport(Base):
    __tablename__ = "nbd_exports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    disk_key: Mapped[int] = mapped_column(Integer)
    port: Mapped[int] = mapped_column(Integer, unique=True)
    export_name: Mapped[str] = mapped_column(String(128))
    file_path: Mapped[str] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    # /proc/<pid>/stat start time: a recycled pid never matches it.
    pid_start_ticks: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
