"""The hub's browsing sessions: at most `limit` appliances at once, one per
restore point (opening a point that is open already joins its session, so each
click does not pay the launch again), each closed after `idle_s` without use,
when its appliance fails, or when asked. A session is a task (kind `browse`)
whose row names its point: prune keeps the point while it runs."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sendense.common.errors import NotFound, PoolExhausted, SendenseError
from sendense.hub.db.database import Database
from sendense.hub.db.models import TaskKind
from sendense.hub.files.appliance import (
    Appliance,
    ApplianceSettings,
    remove_leftover_sockdirs,
    stop_leftover_appliances,
)
from sendense.hub.files.browse import BrowseSession
from sendense.hub.repository.repositories import RepositoryService
from sendense.hub.restore.points import restorable_point
from sendense.hub.tasks.catalog import TaskCatalog
from sendense.hub.tasks.runner import internal_error
from sendense.hub.tasks.task_log import TaskLogs
from sendense.hub.tasks.task_log_handler import write_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrowseSettings:
    workroot: Path  # one working directory per appliance (its overlays)
    limit: int = 2
    idle_s: float = 600.0
    appliance: ApplianceSettings = field(default_factory=ApplianceSettings)


class FileRestoreService:
    def __init__(
        self,
        db: Database,
        repos: RepositoryService,
        tasks: TaskCatalog,
        logs: TaskLogs,
        settings: BrowseSettings,
    ) -> None:
        self.db = db
        self.repos = repos
        self.tasks = tasks
        self.logs = logs
        self.settings = settings
        self._sessions: dict[str, BrowseSession] = {}
        self._lock = threading.Lock()

    def open(self, point_id: str, started_by: str) -> BrowseSession:
        """The point's session, launched now (10 to 30 s) or joined when open."""
        with self._lock:
            session = self._sessions.get(point_id)
            if session is None:
                if len(self._sessions) >= self.settings.limit:
                    raise PoolExhausted(
                        f"{len(self._sessions)} restore points are being browsed, the most "
                        "at once (file_restore_appliances): close one, or wait until one "
                        "is idle"
                    )
                drives, keys, vm_id = self._drives(point_id)
                task_id = self.tasks.open(TaskKind.BROWSE, vm_id, started_by, point_id)
                workdir = self.settings.workroot / task_id
                session = BrowseSession(
                    task_id, point_id, Appliance(workdir, self.settings.appliance)
                )
                self._sessions[point_id] = session
                launch = True
            else:
                launch = False
        if launch:
            self._launch(session, drives, keys)
        return self._ready(session)

    def _drives(self, point_id: str) -> tuple[list[tuple[Path, str]], list[int], str]:
        with self.db.session() as s:
            point = restorable_point(s, point_id)
            repo_id, vm_id = point.repository_id, point.vm_id
            disks = sorted((d.disk_key, d.file_path) for d in point.disks)
        repo = self.repos.get(repo_id)
        drives = [(self.repos.resolve(repo, relative), "qcow2") for _, relative in disks]
        return drives, [key for key, _ in disks], vm_id

    def _launch(
        self, session: BrowseSession, drives: list[tuple[Path, str]], keys: list[int]
    ) -> None:
        task_id = session.task_id
        write_line(
            self.logs,
            task_id,
            "INFO",
            f"opening restore point {session.point_id} ({len(drives)} disks) read-only "
            "in an appliance",
        )
        started, took = time.monotonic(), ""
        try:
            took = session.start(drives, keys)
        except SendenseError as exc:
            session.error = exc
        except Exception as exc:  # a bug: the session ends, the hub keeps going
            log.exception("file restore: opening point %s failed", session.point_id)
            session.error = SendenseError(internal_error(exc))
        finally:
            session.ready.set()
        if session.error is not None:
            self._end(session, session.error.message)
            return
        found = ", ".join(
            f"{f.id} {f.type}" + (" (encrypted)" if f.encrypted else "")
            for f in session.filesystems
        )
        write_line(
            self.logs,
            task_id,
            "INFO",
            f"open in {time.monotonic() - started:.1f} s ({took}); filesystems: {found or 'none'}",
        )
        session.touch()

    def _ready(self, session: BrowseSession) -> BrowseSession:
        session.ready.wait(self.settings.appliance.launch_timeout + 60)
        if session.error is not None:
            raise session.error
        if session.appliance.failed:
            self._end(session, session.appliance.failed)
            raise SendenseError(session.appliance.failed)
        session.touch()
        return session

    def get(self, point_id: str) -> BrowseSession:
        with self._lock:
            session = self._sessions.get(point_id)
        if session is None:
            raise NotFound(
                f"restore point {point_id} is not being browsed: open it first "
                "(POST /api/v1/restore-points/{id}/browse)"
            )
        return self._ready(session)

    def sessions(self) -> list[BrowseSession]:
        with self._lock:
            return list(self._sessions.values())

    def points(self) -> set[str]:
        with self._lock:
            return set(self._sessions)

    def close(self, point_id: str) -> str:
        """End the point's session; its task's id."""
        with self._lock:
            session = self._sessions.get(point_id)
        if session is None:
            raise NotFound(f"restore point {point_id} is not being browsed")
        self._end(session)
        return session.task_id

    def _end(self, session: BrowseSession, error: str | None = None) -> None:
        with self._lock:
            if self._sessions.get(session.point_id) is not session:
                return  # ended already
            del self._sessions[session.point_id]
        session.appliance.close()
        shutil.rmtree(session.appliance.workdir, ignore_errors=True)
        write_line(
            self.logs,
            session.task_id,
            "ERROR" if error else "INFO",
            f"closed: {error}" if error else "closed",
        )
        self.tasks.close(session.task_id, error, "appliance_failed" if error else None)
        log.info("file restore session closed point=%s task=%s", session.point_id, session.task_id)

    def expire_idle(self) -> list[str]:
        """Close sessions idle for `idle_s` (not while a download runs) and those
        whose appliance failed; their points."""
        now = time.monotonic()
        ended = []
        for session in self.sessions():
            if not session.ready.is_set():
                continue
            if session.appliance.failed:
                self._end(session, session.appliance.failed)
            elif not session.busy and now - session.last_used >= self.settings.idle_s:
                self._end(session)
            else:
                continue
            ended.append(session.point_id)
        return ended

    def close_all(self) -> None:
        for session in self.sessions():
            self._end(session, "the hub stopped")

    def stop_leftovers(self) -> int:
        """Appliances a killed hub left, and their socket directories (start-up,
        before the scratch space, where they are recorded, is emptied)."""
        if not self.settings.workroot.exists():
            return 0
        stopped = stop_leftover_appliances(self.settings.workroot)
        remove_leftover_sockdirs(self.settings.workroot)
        return stopped
