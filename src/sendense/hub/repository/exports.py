"""qemu-nbd exports of the hub: one process per disk being written, each recorded
in the database (row first, then the process, then its pid), so that a hub that
crashed finds and stops its orphans at start-up, and nothing else."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select

from sendense.common.processes import process_info, processes, terminate_pid
from sendense.hub.db.database import Database
from sendense.hub.db.models import NbdExport
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd, is_qemu_nbd_for, probe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportInfo:
    id: str
    job_id: str
    disk_key: int
    port: int
    export_name: str
    file_path: str
    pid: int | None
    alive: bool


@dataclass(frozen=True)
class ExportSettings:
    host: str
    shared: int
    binary: str
    log_dir: Path


def find_qemu_nbd(port: int, image: str, pid: int | None, start_ticks: int | None) -> int | None:
    """The pid of the qemu-nbd serving `image` on `port`, checked by command line."""
    if pid is not None:
        info = process_info(pid)
        if info and is_qemu_nbd_for(info, port, image):
            if start_ticks is None or info.start_ticks == start_ticks:
                return pid
            return None
    for found in processes():
        if is_qemu_nbd_for(found, port, image):
            return found.pid
    return None


class ExportManager:
    def __init__(self, db: Database, settings: ExportSettings) -> None:
        self.db = db
        self.settings = settings
        self._servers: dict[str, QemuNbd] = {}
        self._lock = threading.Lock()

    def start(
        self,
        job_id: str,
        disk_key: int,
        port: int,
        image: Path,
        name: str,
        cache: str,
        tls_dir: Path | None = None,
    ) -> ExportInfo:
        """`tls_dir`: serve with TLS-PSK, the key read from its keys.psk."""
        with self.db.session() as s:
            row = NbdExport(
                job_id=job_id, disk_key=disk_key, port=port, export_name=name, file_path=str(image)
            )
            s.add(row)
            s.flush()
            export_id = row.id
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        spec = ExportSpec(
            image=image,
            port=port,
            name=name,
            host=self.settings.host,
            shared=self.settings.shared,
            cache=cache,
            tls_dir=tls_dir,
        )
        server = QemuNbd(spec, self.settings.binary, self.settings.log_dir / f"qemu-nbd-{port}.log")
        try:
            server.start()
        except BaseException:
            with self.db.session() as s:
                s.execute(delete(NbdExport).where(NbdExport.id == export_id))
            raise
        with self._lock:
            self._servers[export_id] = server
        info = process_info(server.pid)
        with self.db.session() as s:
            row = s.get_one(NbdExport, export_id)
            row.pid = server.pid
            row.pid_start_ticks = info.start_ticks if info else None
        log.info(
            "export started job=%s disk=%d port=%d pid=%d export=%s",
            job_id,
            disk_key,
            port,
            server.pid,
            name,
        )
        return ExportInfo(export_id, job_id, disk_key, port, name, str(image), server.pid, True)

    def stop_job(self, job_id: str) -> dict[int, str]:
        """Stop the job's exports. Per disk key, why its writes cannot be trusted: the
        qemu-nbd this hub started for it had ended by itself (killed, crashed, or never
        bound its port) or is not this process's child."""
        with self.db.session() as s:
            rows = s.scalars(select(NbdExport).where(NbdExport.job_id == job_id)).all()
        return {
            row.disk_key: problem for row in rows if (problem := self._stop_row(row)) is not None
        }

    def _stop_row(self, row: NbdExport) -> str | None:
        problem = None
        with self._lock:
            server = self._servers.pop(row.id, None)
        if server is not None:
            ended = server.exited()
            code = server.stop()
            log.info("export stopped job=%s port=%d exit=%s", row.job_id, row.port, code)
            if ended is not None:
                problem = f"its qemu-nbd (pid {row.pid}) had ended by itself with status {ended}"
        else:
            problem = "its qemu-nbd was not started by this hub process"
            pid = find_qemu_nbd(row.port, row.file_path, row.pid, row.pid_start_ticks)
            if pid is not None:
                terminate_pid(pid)
                log.warning(
                    "orphaned qemu-nbd stopped job=%s port=%d pid=%d", row.job_id, row.port, pid
                )
        with self.db.session() as s:
            s.execute(delete(NbdExport).where(NbdExport.id == row.id))
        return problem

    def stop_orphans(self, active_job_ids: set[str]) -> int:
        """Stop exports whose job is no longer running; returns how many."""
        with self.db.session() as s:
            rows = s.scalars(select(NbdExport)).all()
        stale = [r for r in rows if r.job_id not in active_job_ids]
        for row in stale:
            self._stop_row(row)
        return len(stale)

    def list(self) -> list[ExportInfo]:
        with self.db.session() as s:
            rows = s.scalars(select(NbdExport).order_by(NbdExport.port)).all()
        return [
            ExportInfo(
                r.id,
                r.job_id,
                r.disk_key,
                r.port,
                r.export_name,
                r.file_path,
                r.pid,
                probe(self.settings.host, r.port, timeout=0.2),
            )
            for r in rows
        ]

    def stop_all(self) -> None:
        with self._lock:
            ids = list(self._servers)
        with self.db.session() as s:
            rows = s.scalars(select(NbdExport).where(NbdExport.id.in_(ids))).all()
        for row in rows:
            self._stop_row(row)
