"""One libguestfs appliance: the restore point's disks attached read-only (the
appliance writes to its own throwaway overlays in `workdir`, never to the
backup), every call under a watchdog, and nothing left when it closes.

The watchdog is what keeps a damaged filesystem from hanging the hub: a call
(or a stream) that makes no progress for `call_timeout` seconds has its
appliance killed, the call fails with a clear error, and the session is over.
The appliance's processes are found by `workdir` in their command line, which is
also how start-up stops those of a killed hub (libguestfs' own recovery process
normally does it first). libguestfs keeps the appliance's socket in a directory
of its own under /tmp (always /tmp for root), which its `close` removes and a
killed hub leaves: each launch writes that directory's path into `workdir`, and
start-up removes the ones recorded there (`remove_leftover_sockdirs`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sendense.common.errors import SendenseError, Unavailable
from sendense.common.processes import ProcessInfo, processes, terminate_pid
from sendense.hub.files.boot import boot_fixed

log = logging.getLogger(__name__)
T = TypeVar("T")
SOCKDIR_RECORD = "sockdir"  # in an appliance's workdir: its socket directory
# libguestfs' socket directory (mkdtemp), as its qemu's -chardev names it.
_SOCKDIR = re.compile(r"path=(/[^,]*/libguestfs[A-Za-z0-9]{6})/guestfsd\.sock")


class ApplianceFailed(SendenseError):
    """The appliance refused a call or died (a damaged filesystem, a timeout)."""

    http_status = 502
    exit_code = 8
    code = "appliance_failed"


@dataclass(frozen=True)
class ApplianceSettings:
    # Force software emulation: where /dev/kvm is missing or unusable (these
    # machines), qemu's fallback to TCG is not always taken by itself.
    force_tcg: bool = True
    memory_mb: int = 768
    launch_timeout: float = 600.0
    call_timeout: float = 120.0


def _guestfs() -> Any:
    """The libguestfs bindings (Debian's python3-guestfs: system site packages)."""
    try:
        import guestfs  # type: ignore[import-untyped]
    except ImportError as exc:
        raise Unavailable(
            "file-level restore needs libguestfs: install the Debian packages "
            "python3-guestfs, libguestfs-xfs and linux-image-amd64 (make deps does)"
        ) from exc
    return guestfs


def _appliance_processes(workdir: Path) -> list[ProcessInfo]:
    """The processes of the appliance working in `workdir` (its qemu): those
    naming a file under it on their command line."""
    marker = f"{workdir.resolve()}{os.sep}"
    return [
        p for p in processes() if p.pid != os.getpid() and any(marker in arg for arg in p.argv[1:])
    ]


def appliance_pids(workdir: Path) -> list[int]:
    """The pids of the appliance working in `workdir`."""
    return [p.pid for p in _appliance_processes(workdir)]


def record_sockdir(workdir: Path) -> Path | None:
    """Write the socket directory of the appliance working in `workdir` (from
    its qemu's command line) into `workdir`; returns it."""
    for p in _appliance_processes(workdir):
        for arg in p.argv:
            if found := _SOCKDIR.search(arg):
                sockdir = Path(found[1])
                (workdir / SOCKDIR_RECORD).write_text(str(sockdir))
                return sockdir
    return None


def remove_leftover_sockdirs(root: Path) -> int:
    """Remove the socket directories recorded under `root` that a killed hub's
    appliances left: only libguestfs' own (by name), this user's, holding
    nothing but sockets. Returns how many."""
    removed = 0
    for record in root.glob(f"*/{SOCKDIR_RECORD}"):
        sockdir = Path(record.read_text().strip())
        try:
            owned = sockdir.lstat().st_uid == os.getuid() and sockdir.is_dir()
            if not owned or not re.fullmatch(r"libguestfs[A-Za-z0-9]{6}", sockdir.name):
                continue
            if any(not entry.is_socket() for entry in sockdir.iterdir()):
                continue
        except OSError:  # gone already
            continue
        shutil.rmtree(sockdir, ignore_errors=True)
        log.info("removed a leftover appliance socket directory %s", sockdir)
        removed += 1
    return removed


def stop_leftover_appliances(root: Path) -> int:
    """Stop appliances a killed hub left working under `root`; returns how many."""
    pids = appliance_pids(root)
    for pid in pids:
        log.warning("stopping a leftover file-restore appliance pid=%d", pid)
        terminate_pid(pid)
    return len(pids)


class Appliance:
    """A launched appliance. Calls are serialised (one handle); `call` and
    downloads into a pipe (whose reader calls `progress`) run under the watchdog."""

    def __init__(self, workdir: Path, settings: ApplianceSettings) -> None:
        self.workdir = workdir
        self.settings = settings
        self._lock = threading.Lock()
        self._busy_since: float | None = None
        self._progress_at = 0.0
        self._deadline = settings.call_timeout
        self._killed: str | None = None
        self._closed = False
        self._watch = threading.Event()
        self._g: Any = None

    def launch(self, drives: Sequence[tuple[Path, str]]) -> None:
        """Start the appliance with `drives` ((file, format), in order: sda, sdb...)."""
        guestfs = _guestfs()
        self.workdir.mkdir(parents=True, mode=0o700, exist_ok=True)
        g = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
        g.set_backend("direct")
        boot_fixed(g)
        if self.settings.force_tcg:
            g.set_backend_settings(["force_tcg"])
        g.set_tmpdir(str(self.workdir))
        g.set_memsize(self.settings.memory_mb)
        g.set_recovery_proc(True)  # the appliance dies with the hub
        g.set_autosync(False)  # nothing is written
        for path, fmt in drives:
            g.add_drive_opts(str(path), format=fmt, readonly=True)
        self._g = g
        threading.Thread(target=self._watchdog, name="appliance-watchdog", daemon=True).start()
        self.call(g.launch, timeout=self.settings.launch_timeout)
        record_sockdir(self.workdir)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """`fn(*args)` on the handle; ApplianceFailed when it fails or times out."""
        with self._lock:
            if self._killed or self._closed:
                raise ApplianceFailed(self._killed or "the appliance is closed")
            self._busy(timeout)
            try:
                return fn(*args)
            except RuntimeError as exc:
                raise ApplianceFailed(self._killed or _message(exc)) from None
            finally:
                self._busy_since = None

    def progress(self) -> None:
        self._progress_at = time.monotonic()

    def handle(self) -> Any:
        return self._g

    @property
    def failed(self) -> str | None:
        return self._killed

    def _busy(self, timeout: float | None) -> None:
        self._deadline = timeout or self.settings.call_timeout
        self._progress_at = time.monotonic()
        self._busy_since = self._progress_at

    def _watchdog(self) -> None:
        while not self._watch.wait(1.0):
            since = self._busy_since
            if since is None:
                continue
            stalled = time.monotonic() - self._progress_at
            if stalled >= self._deadline:
                self._killed = (
                    f"the appliance made no progress for {stalled:.0f} s and was stopped "
                    "(a damaged filesystem?): open the restore point again"
                )
                log.error("file-restore appliance stalled, killing it workdir=%s", self.workdir)
                self._kill()
                return

    def _kill(self) -> None:
        for pid in appliance_pids(self.workdir):
            terminate_pid(pid, timeout=2.0)

    def close(self) -> None:
        """Shut the appliance down (or kill it), close the handle; no process stays."""
        self._watch.set()
        self._closed = True
        g, self._g = self._g, None
        if g is not None:
            if self._lock.acquire(timeout=5.0):
                try:
                    g.shutdown()
                except RuntimeError:
                    pass
                finally:
                    self._lock.release()
            else:  # a call in flight: stop the appliance under it
                self._kill()
            with contextlib.suppress(RuntimeError):
                g.close()
        self._kill()  # whatever did not stop with the shutdown


def _message(exc: RuntimeError) -> str:
    text = str(exc).strip()
    return text.split(": ", 1)[1] if text.count(": ") and len(text) < 600 else text[:600]
