"""Read access to a restore point over NBD: each disk served by qemu-nbd on a pool
port, with a throwaway QCOW2 overlay on top of the point's file, so a client's
writes land in the overlay and never in the backup.

An access is a job row (kind "access") with its exports and ports, like a backup:
start-up reconciliation stops what a killed hub left (exports, ports), and the
overlays live in the scratch directory, which start-up empties.

An instant access (purpose "instant", opened for a person or a tool) is served
with TLS and a pre-shared key: a fresh key per access, identity `access-<id>`,
written to `<keys dir>/<id>/keys.psk` (0700 directory, 0600 file) where its
qemu-nbd servers read it, and returned once, by `open`. Closing the access
removes the directory; a restart closes every access, and `remove_stale_keys`
drops the directories of accesses no longer open: the key is never kept at
rest beyond its access, so after a restart the user opens a new access.

A restore to vCenter (purpose "restore") is read by the node through the SSH
tunnel, which encrypts already: its exports stay plain NBD (docs/decisions.md).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from sendense.common.errors import NotFound
from sendense.common.files import private_dir
from sendense.hub.db.database import Database
from sendense.hub.db.models import (
    Job,
    JobState,
    NbdExport,
    TaskKind,
    utcnow,
)
from sendense.hub.nodes.registry import NodeInfo
from sendense.hub.repository.exports import ExportManager
from sendense.hub.repository.logins import node_login
from sendense.hub.repository.ports import PortAllocator
from sendense.hub.repository.repositories import RepositoryService
from sendense.hub.restore.points import restorable_point
from sendense.nbd.psk import image_opts, nbds_uri, new_key, write_psk

log = logging.getLogger(__name__)


INSTANT = "instant"


@dataclass(frozen=True)
class DiskAccess:
    disk_key: int
    port: int
    export_name: str
    # nbds://IDENTITY@HOST:PORT/EXPORT with TLS (the client adds
    # ?tls-psk-file=FILE), else nbd://HOST:PORT/EXPORT.
    uri: str
    # qemu's --image-opts with TLS (the credentials object is `tls0`), else None.
    image_opts: str | None = None


@dataclass(frozen=True)
class AccessInfo:
    id: str
    restore_point_id: str
    purpose: str
    started_at: datetime | None
    disks: list[DiskAccess]
    psk_identity: str | None = None
    # The pre-shared key: set by `open` only, never by `get` (shown once).
    psk: str | None = field(default=None, repr=False)


def psk_identity(access_id: str) -> str:
    return f"access-{access_id}"


def established_ports() -> set[int]:
    """Local TCP ports with an established connection (/proc/net/tcp and tcp6)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "01":  # TCP_ESTABLISHED
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class AccessService:
    def __init__(
        self,
        db: Database,
        repos: RepositoryService,
        ports: PortAllocator,
        exports: ExportManager,
        scratch: Path,
        targets_host: str,
        keys_dir: Path,
    ) -> None:
        self.db = db
        self.repos = repos
        self.ports = ports
        self.exports = exports
        self.scratch = scratch
        self.targets_host = targets_host
        self.keys_dir = keys_dir
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()
        self._opening: set[str] = set()

    def open(
        self, point_id: str, purpose: str = INSTANT, node: NodeInfo | None = None
    ) -> AccessInfo:
        """Serve every disk of a complete restore point; refuses an unfinished or
        invalid one. An access for a node (not an instant one) is a socket only that
        node's tunnel reaches; an instant access listens on TCP with TLS-PSK, and
        its answer carries its key: the only time."""
        reader = None if purpose == INSTANT else node_login(node)
        with self.db.session() as s:
            point = restorable_point(s, point_id)
            repo_id, vm_id = point.repository_id, point.vm_id
            disks = [(d.disk_key, d.file_path, d.virtual_size) for d in point.disks]
        repo = self.repos.get(repo_id)  # its own session: SQLite allows one writer
        with self.db.session() as s:
            job = Job(
                vm_id=vm_id,
                kind=TaskKind.ACCESS,
                purpose=purpose[:16],
                state=JobState.RUNNING,
                started_at=utcnow(),
            )
            s.add(job)
            s.flush()
            access_id = job.id
        with self._lock:
            # Not idle while it opens (its qemu-nbd may take a while to listen):
            # the idle clock starts once it is open.
            self._opening.add(access_id)
        directory = self.scratch / f"access-{access_id}"
        key = new_key() if purpose == INSTANT else None
        tls_dir = self.keys_dir / access_id if key else None
        try:
            if tls_dir is not None and key is not None:
                private_dir(self.keys_dir)
                write_psk(tls_dir, psk_identity(access_id), key)
            directory.mkdir(parents=True, mode=0o700)
            for disk_key, relative, size in disks:
                overlay = directory / f"{disk_key}.qcow2"
                source = self.repos.resolve(repo, relative)
                self.repos.qemu_img.create(overlay, size, backing=str(source))
                port = self.ports.allocate(f"access:{access_id}", access_id, disk_key)
                name = f"{point_id}-{disk_key}"
                self.exports.start(
                    access_id, disk_key, port, overlay, name, "writeback", reader, tls_dir
                )
        except BaseException as exc:
            self._teardown(access_id, f"could not open the access: {exc}")
            raise
        finally:
            with self._lock:
                self._opening.discard(access_id)
        with self._lock:
            self._last_used[access_id] = time.monotonic()
        log.info(
            "access opened id=%s restore_point=%s purpose=%s tls=%s",
            access_id,
            point_id,
            purpose,
            "psk" if key else "none",
        )
        return dataclasses.replace(self.get(access_id), psk=key)

    def get(self, access_id: str) -> AccessInfo:
        with self.db.session() as s:
            job = s.get(Job, access_id)
            if job is None or job.kind != TaskKind.ACCESS or job.state != JobState.RUNNING:
                raise NotFound(f"no open access {access_id}")
            rows = s.scalars(
                select(NbdExport).where(NbdExport.job_id == access_id).order_by(NbdExport.disk_key)
            ).all()
            # Export names are `<restore point id>-<disk key>`: the job row has no
            # column for the point.
            point_id = rows[0].export_name.rsplit("-", 1)[0] if rows else ""
            purpose = job.purpose or INSTANT
            started_at = job.started_at
            exports = [(r.disk_key, r.port, r.export_name) for r in rows]
        host = self._uri_host(purpose)
        if purpose != INSTANT:
            disks = [DiskAccess(k, p, n, f"nbd://{host}:{p}/{n}") for k, p, n in exports]
            return AccessInfo(access_id, point_id, purpose, started_at, disks)
        identity = psk_identity(access_id)
        disks = [
            DiskAccess(k, p, n, nbds_uri(identity, host, p, n), image_opts(host, p, n))
            for k, p, n in exports
        ]
        return AccessInfo(access_id, point_id, purpose, started_at, disks, identity)

    def all(self) -> list[AccessInfo]:
        with self.db.session() as s:
            ids = list(
                s.scalars(
                    select(Job.id).where(Job.kind == TaskKind.ACCESS, Job.state == JobState.RUNNING)
                )
            )
        found = []
        for access_id in ids:
            try:
                found.append(self.get(access_id))
            except NotFound:
                continue  # closed meanwhile
        return found

    def _uri_host(self, purpose: str) -> str:
        """An instant access is for an operator: the address qemu-nbd listens on.
        Any other purpose (a restore through the node) names the hub's NBD ports
        as the node sees them, through the tunnel."""
        return self.exports.settings.host if purpose == INSTANT else self.targets_host

    def close(self, access_id: str) -> None:
        """Stop the exports, free the ports, drop the overlays. Closing an access
        that is closed already (expired, or failed by a restart) does nothing."""
        with self.db.session() as s:
            job = s.get(Job, access_id)
            if job is None or job.kind != TaskKind.ACCESS:
                raise NotFound(f"no access {access_id}")
        self._teardown(access_id)

    def _teardown(self, access_id: str, error: str | None = None) -> None:
        self.exports.stop_job(access_id)
        with self.db.session() as s:
            self.ports.release_job(s, access_id)
            job = s.get(Job, access_id)
            if job is not None and job.state == JobState.RUNNING:
                job.state = JobState.FAILED if error else JobState.COMPLETE
                job.error, job.finished_at = error, utcnow()
        shutil.rmtree(self.scratch / f"access-{access_id}", ignore_errors=True)
        shutil.rmtree(self.keys_dir / access_id, ignore_errors=True)
        with self._lock:
            self._last_used.pop(access_id, None)
        log.info("access closed id=%s%s", access_id, f" error={error}" if error else "")

    def remove_stale_keys(self) -> int:
        """Remove the key directories of accesses that are not open (a hub killed
        before closing them); returns how many. Start-up runs it after reconciling."""
        if not self.keys_dir.is_dir():
            return 0
        with self.db.session() as s:
            open_ids = set(
                s.scalars(
                    select(Job.id).where(Job.kind == TaskKind.ACCESS, Job.state == JobState.RUNNING)
                )
            )
        stale = [d for d in self.keys_dir.iterdir() if d.name not in open_ids]
        for directory in stale:
            shutil.rmtree(directory, ignore_errors=True)
        if stale:
            log.warning("removed the TLS key directories of %d closed accesses", len(stale))
        return len(stale)

    def expire_idle(self, idle_seconds: float, purpose: str = INSTANT) -> list[str]:
        """Close accesses of `purpose` that no client has been connected to for
        `idle_seconds`; returns their ids."""
        busy = established_ports()
        now = time.monotonic()
        expired = []
        for access in self.all():
            if access.purpose != purpose:
                continue
            with self._lock:
                if access.id in self._opening:
                    continue
                if any(d.port in busy for d in access.disks):
                    self._last_used[access.id] = now
                last = self._last_used.setdefault(access.id, now)
            if now - last >= idle_seconds:
                log.info("access idle for %.0f s, closing id=%s", now - last, access.id)
                self._teardown(access.id)
                expired.append(access.id)
        return expired
