"""The hub's own read-only access to an image: a qemu-nbd on a Unix socket in a
scratch directory of the data directory (no port, no network), stopped in every
outcome. A hub killed meanwhile leaves the server behind: start-up stops every
qemu-nbd whose socket lies in the scratch directory (`stop_leftovers`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sendense.nbd.process import process_info, terminate_pid
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd

log = logging.getLogger(__name__)


@asynccontextmanager
async def read_only_uri(image: Path, scratch: Path, cache: str = "none") -> AsyncIterator[str]:
    """An nbd+unix URI serving `image` (with its backing chain) read-only."""
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory = Path(tempfile.mkdtemp(prefix="read-", dir=scratch))
    spec = ExportSpec(
        image=image, port=0, name="read", socket=directory / "nbd.sock", shared=4,
        cache=cache, read_only=True,
    )  # fmt: skip
    server = QemuNbd(spec, log_path=directory / "qemu-nbd.log")
    try:
        await asyncio.to_thread(server.start)
        yield spec.uri
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(directory, ignore_errors=True)


def stop_leftovers(scratch: Path) -> int:
    """Stop qemu-nbd servers a killed hub left serving from `scratch`; returns how many."""
    prefix = f"{scratch.resolve()}{os.sep}"
    stopped = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        info = process_info(int(entry.name))
        if info is None or not os.path.basename(info.argv[0]).startswith("qemu-nbd"):
            continue
        sockets = [b for a, b in zip(info.argv, info.argv[1:], strict=False) if a == "-k"]
        if any(s.startswith(prefix) for s in sockets):
            log.warning("stopping a leftover read-only qemu-nbd pid=%d", info.pid)
            terminate_pid(info.pid)
            stopped += 1
    if scratch.exists():
        for leftover in scratch.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
    return stopped
