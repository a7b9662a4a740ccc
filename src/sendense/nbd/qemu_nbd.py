"""One qemu-nbd process serving one image: start, wait until ready, probe, stop."""

from __future__ import annotations

import itertools
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sendense.common.processes import ChildProcess, ProcessInfo, listener_pid
from sendense.nbd.psk import CREDS_ID, server_object

NBD_MAGIC = b"NBDMAGIC"


@dataclass(frozen=True)
class ExportSpec:
    image: Path
    port: int
    name: str
    host: str = "127.0.0.1"
    shared: int = 10
    cache: str = "none"
    fmt: str = "qcow2"
    read_only: bool = False
    # A Unix socket instead of host:port (the hub's own reads: no port, no network).
    socket: Path | None = None
    # TLS with a pre-shared key: the directory of its keys.psk (see nbd/psk.py).
    tls_dir: Path | None = None

    @property
    def uri(self) -> str:
        if self.socket is not None:
            return f"nbd+unix:///{self.name}?socket={self.socket}"
        return f"nbd://{self.host}:{self.port}/{self.name}"


def probe(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when an NBD server answers with its greeting on host:port (port 0: host
    is a Unix socket path)."""
    try:
        if port == 0:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(host)
                return sock.recv(8) == NBD_MAGIC
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return sock.recv(8) == NBD_MAGIC
    except OSError:
        return False


def is_qemu_nbd_for(info: ProcessInfo, port: int, image: str) -> bool:
    """Does this process look like the qemu-nbd we started for `image` on `port`
    (TCP `-p PORT`, or a Unix socket `-k .../PORT.sock`)?"""
    argv = info.argv
    if not argv or not os.path.basename(argv[0]).startswith("qemu-nbd"):
        return False
    has_port = any(
        (a == "-p" and b == str(port)) or (a == "-k" and os.path.basename(b) == f"{port}.sock")
        for a, b in itertools.pairwise(argv)
    )
    return has_port and argv[-1] == image


class QemuNbd:
    """`qemu-nbd --persistent`: without it the server exits when its first client
    (a health probe counts) disconnects."""

    def __init__(self, spec: ExportSpec, binary: str = "qemu-nbd", log_path: Path | None = None):
        self.spec = spec
        self.binary = binary
        self.log_path = log_path
        self._child: ChildProcess | None = None

    @property
    def argv(self) -> list[str]:
        s = self.spec
        argv = [
            self.binary,
            f"--shared={s.shared}",
            "--persistent",
            f"--cache={s.cache}",
            "-f",
            s.fmt,
            *(["-k", str(s.socket)] if s.socket else ["-b", s.host, "-p", str(s.port)]),
            "-x",
            s.name,
        ]
        if s.read_only:
            argv.append("--read-only")
        if s.tls_dir is not None:
            argv += ["--object", server_object(s.tls_dir), "--tls-creds", CREDS_ID]
        return [*argv, str(s.image)]

    @property
    def pid(self) -> int:
        if self._child is None:
            raise RuntimeError("qemu-nbd is not started")
        return self._child.pid

    def start(self, timeout: float = 10.0) -> None:
        """Ready when it answers, and on TCP when the listener is this process: a
        squatter that took the port first never gets a job's data (qemu-nbd then
        fails to bind and its exit raises)."""
        self._child = ChildProcess(self.argv, log_path=self.log_path, own_session=True)
        self._child.start(ready=self._ready, timeout=timeout)

    def _ready(self) -> bool:
        if not self._probe(timeout=0.5):
            return False
        s = self.spec
        return s.socket is not None or listener_pid(s.host, s.port) == self.pid

    def exited(self) -> int | None:
        """Its exit code if it has ended (by itself: the hub has not stopped it yet)."""
        return None if self._child is None else self._child.poll()

    def healthy(self) -> bool:
        return self._child is not None and self._child.running() and self._probe()

    def _probe(self, timeout: float = 1.0) -> bool:
        s = self.spec
        return probe(str(s.socket), 0, timeout) if s.socket else probe(s.host, s.port, timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate, wait, kill. Returns the exit code (None if never started)."""
        if self._child is None:
            return None
        return self._child.stop(timeout)

    def __enter__(self) -> QemuNbd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
