"""VDDK reader: nbdkit's `vddk` plugin serves the snapshot's disk on a Unix socket,
libnbd reads from it. Used where VMware's VDDK library and the plugin are
installed (production proxies); Debian ships neither, so here it stays unused
and its test is skipped with that reason."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from sendense.common.logging import register_secret
from sendense.common.processes import ChildProcess, run_tool


def vddk_available(libdir: str | None) -> str | None:
    """None when usable, else why not."""
    if shutil.which("nbdkit") is None:
        return "nbdkit is not installed"
    probe = run_tool(["nbdkit", "vddk", "--dump-plugin"], timeout=30, ok=None)
    if probe.returncode != 0:
        return "nbdkit has no vddk plugin (Debian does not build it)"
    if not libdir or not Path(libdir, "lib64").is_dir():
        return "VDDK is not installed (set the node's vddk_libdir)"
    return None


class VddkReader:
    def __init__(
        self,
        *,
        libdir: str,
        server: str,
        user: str,
        password: str,
        thumbprint_sha1: str,
        vm_moref: str,
        snapshot_moref: str,
        datastore_path: str,
    ) -> None:
        import nbd  # Debian's python3-libnbd

        register_secret(password)
        self._dir = Path(tempfile.mkdtemp(prefix="sendense-vddk-"))
        secret = self._dir / "password"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password)
        sock = self._dir / "nbd.sock"
        self.argv = [
            "nbdkit",
            "--exit-with-parent",
            "--readonly",
            "-U",
            str(sock),
            "vddk",
            f"libdir={libdir}",
            f"server={server}",
            f"user={user}",
            f"password=+{secret}",
            f"thumbprint={thumbprint_sha1}",
            f"vm=moref={vm_moref}",
            f"snapshot={snapshot_moref}",
            f"file={datastore_path}",
        ]
        self._child = ChildProcess(self.argv, log_path=self._dir / "nbdkit.log")
        try:
            self._child.start(ready=sock.exists, timeout=60, poll=0.05)
        except BaseException:
            self._stop()
            raise
        secret.unlink()
        self._handle = nbd.NBD()
        self._handle.connect_unix(str(sock))

    async def read(self, offset: int, length: int) -> bytes:
        data: bytes = await asyncio.to_thread(self._handle.pread, length, offset)
        return data

    async def close(self) -> None:
        await asyncio.to_thread(self._handle.shutdown)
        self._stop()

    def _stop(self) -> None:
        self._child.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
