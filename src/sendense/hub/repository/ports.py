"""The NBD port pool (10100-10200 by default).

An allocation is a row whose primary key is the port, so the database itself
guarantees that two allocations (threads, processes, hubs sharing PostgreSQL)
never hold the same port. A port that another program already listens on is
skipped.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sendense.common.errors import PoolExhausted
from sendense.hub.db.database import Database
from sendense.hub.db.models import NbdPort

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PortAllocation:
    port: int
    owner: str
    job_id: str | None
    disk_key: int | None


@dataclass(frozen=True)
class PoolStatus:
    first: int
    last: int
    allocations: list[PortAllocation]

    @property
    def total(self) -> int:
        return self.last - self.first + 1

    @property
    def used(self) -> int:
        return len(self.allocations)

    @property
    def free(self) -> int:
        return self.total - self.used


def port_is_bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    def __init__(
        self, db: Database, first: int, last: int, host: str = "127.0.0.1", probe: bool = True
    ) -> None:
        self.db = db
        self.first = first
        self.last = last
        self.host = host
        self.probe = probe

    def allocate_in(
        self, session: Session, owner: str, job_id: str | None = None, disk_key: int | None = None
    ) -> int:
        """Take the lowest free port inside `session`'s transaction (committed with it)."""
        taken = set(session.scalars(select(NbdPort.port)).all())
        for port in range(self.first, self.last + 1):
            if port in taken:
                continue
            if self.probe and not port_is_bindable(self.host, port):
                log.warning("port %d is in use by another program; skipped", port)
                continue
            try:
                with session.begin_nested():
                    session.add(NbdPort(port=port, owner=owner, job_id=job_id, disk_key=disk_key))
            except IntegrityError:
                continue  # another allocator took it first
            log.info("port allocated port=%d owner=%s disk=%s", port, owner, disk_key)
            return port
        raise PoolExhausted(
            f"no free NBD port in {self.first}-{self.last}: all "
            f"{self.last - self.first + 1} are in use; retry when a running job ends"
        )

    def allocate(self, owner: str, job_id: str | None = None, disk_key: int | None = None) -> int:
        with self.db.session() as s:
            return self.allocate_in(s, owner, job_id, disk_key)

    def release(self, port: int) -> None:
        with self.db.session() as s:
            s.execute(delete(NbdPort).where(NbdPort.port == port))

    def release_job(self, session: Session, job_id: str) -> int:
        result = session.execute(delete(NbdPort).where(NbdPort.job_id == job_id))
        return int(getattr(result, "rowcount", 0) or 0)

    def status(self) -> PoolStatus:
        with self.db.session() as s:
            rows = s.scalars(select(NbdPort).order_by(NbdPort.port)).all()
        return PoolStatus(
            self.first,
            self.last,
            [PortAllocation(r.port, r.owner, r.job_id, r.disk_key) for r in rows],
        )
