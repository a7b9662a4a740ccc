"""qemu-nbd exports of the hub: one process per disk being written, each recorded
in the database (row first, then the process, then its pid), so that a hub that
crashed finds and stops its orphans at start-up, and nothing else.

An export a node reads or writes (backup, restore to vCenter) is a Unix socket,
`<socket_root>/<node's system user>/<port>.sock` (`hub/<port>.sock` for a job
that names no node), 0600 in a 0700 directory of the node's login user
(logins.py); `socket_root` is `/run/sendense/<hub id>/nbd` for a hub run as root.
The node's tunnel relays its NBD connections there and nowhere else
(nodes/nbd_relay.py); no other local user, no other node's user, connects, and
no TCP port carries it. The pool port stays the
export's identity (the targets string names it). An export for people (instant
access) listens on TCP `host:port`.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select

from sendense.common.errors import SendenseError
from sendense.common.processes import process_info, processes, terminate_pid
from sendense.hub.db.database import Database
from sendense.hub.db.models import NbdExport
from sendense.hub.repository.logins import NodeLogin
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
    # Where the hub itself reaches it: nbd+unix:///NAME?socket=PATH, or nbd://HOST:PORT/NAME.
    uri: str


@dataclass(frozen=True)
class ExportSettings:
    host: str
    shared: int
    binary: str
    log_dir: Path
    # Node exports' sockets: one 0700 directory per node login user below it.
    socket_root: Path


# sockaddr_un.sun_path holds 108 bytes, its terminating NUL included.
MAX_SOCKET_PATH = 107
# The longest directory name: a node user's (useradd allows 32 characters).
LONGEST_LOGIN = "x" * 32


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
        longest = settings.socket_root / LONGEST_LOGIN / "65535.sock"
        if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
            raise SendenseError(
                f"export sockets such as {longest} would be longer than {MAX_SOCKET_PATH} "
                "bytes, too long for a Unix socket: give the hub a shorter data_dir"
            )
        self.db = db
        self.settings = settings
        self._servers: dict[str, QemuNbd] = {}
        self._lock = threading.Lock()

    def socket_dir(self, login: NodeLogin) -> Path:
        return self.socket_dir_of(login.directory)

    def socket_dir_of(self, directory: str) -> Path:
        return self.settings.socket_root / directory

    def socket_path(self, login: NodeLogin, port: int) -> Path:
        return self.socket_dir(login) / f"{port}.sock"

    def _socket_for(self, login: NodeLogin, port: int) -> Path:
        """The export's socket path, in its login user's own 0700 directory (made
        now); the socket a previous server left is removed."""
        path = self.socket_path(login, port)
        root = self.settings.socket_root
        if not root.is_dir():  # the tunnel's start makes it (nodes/tunnel_sshd.py)
            root.mkdir(parents=True, mode=0o711)
        directory = path.parent
        directory.mkdir(exist_ok=True, mode=0o700)
        if directory.is_symlink() or not directory.is_dir():
            raise SendenseError(f"{directory} is not a directory")
        os.chown(directory, login.uid, login.gid)
        directory.chmod(0o700)
        path.unlink(missing_ok=True)
        return path

    def start(
        self,
        job_id: str,
        disk_key: int,
        port: int,
        image: Path,
        name: str,
        cache: str,
        reader: NodeLogin | None = None,
        tls_dir: Path | None = None,
    ) -> ExportInfo:
        """Serve `image` for the node that logs in as `reader` (its socket), or,
        without one, on TCP `host:port`; `tls_dir`: with TLS-PSK, the key read from
        its keys.psk (an instant access)."""
        socket = self._socket_for(reader, port) if reader is not None else None
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
            socket=socket,
        )
        server = QemuNbd(spec, self.settings.binary, self.settings.log_dir / f"qemu-nbd-{port}.log")
        try:
            server.start()
            if socket is not None and reader is not None:
                # The node's sshd session runs as its login user: the socket is that
                # user's alone (the hub, root in production, reaches it anyway).
                os.chown(socket, reader.uid, reader.gid)
                socket.chmod(0o600)
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
        return ExportInfo(
            export_id, job_id, disk_key, port, name, str(image), server.pid, True, spec.uri
        )

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
        for path in self._sockets(row.port):
            path.unlink(missing_ok=True)
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

    def _sockets(self, port: int) -> list[Path]:
        """The socket files of pool port `port` (one, for whichever login made it)."""
        root = self.settings.socket_root
        if not root.is_dir():
            return []
        return list(root.glob(f"*/{port}.sock"))

    def uri(self, port: int, name: str) -> str:
        """Where the hub itself reaches the export of `port` (tests, checks)."""
        return self._where(port, name)[0]

    def _where(self, port: int, name: str) -> tuple[str, str, int]:
        """(uri, probe host or socket path, probe port: 0 for a socket)."""
        for path in self._sockets(port):
            return f"nbd+unix:///{name}?socket={path}", str(path), 0
        host = self.settings.host
        return f"nbd://{host}:{port}/{name}", host, port

    def list(self) -> list[ExportInfo]:
        with self.db.session() as s:
            rows = s.scalars(select(NbdExport).order_by(NbdExport.port)).all()
        found = []
        for r in rows:
            uri, host, port = self._where(r.port, r.export_name)
            alive = probe(host, port, timeout=0.2)
            where = (r.port, r.export_name, r.file_path, r.pid, alive, uri)
            found.append(ExportInfo(r.id, r.job_id, r.disk_key, *where))
        return found

    def stop_all(self) -> None:
        with self._lock:
            ids = list(self._servers)
        with self.db.session() as s:
            rows = s.scalars(select(NbdExport).where(NbdExport.id.in_(ids))).all()
        for row in rows:
            self._stop_row(row)
