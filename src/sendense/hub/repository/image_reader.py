"""The hub's own read-only access to an image: a qemu-nbd on a Unix socket in a
scratch directory of the data directory (no port, no network), stopped in every
outcome. A hub killed meanwhile leaves the server behind: start-up stops every
qemu-nbd whose socket lies in the scratch directory (`stop_leftovers`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sendense.common.processes import processes, terminate_pid
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd

log = logging.getLogger(__name__)


@asynccontextmanager
async def read_only_uri(image: Path, scratch: Path, cache: str = "none") -> AsyncIterator[str]:
    """An nbd+unix URI serving `image` (with its backing chain) read-only."""
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory = Path(tempfile.mkdtemp(prefix="read-", dir=scratch))
    spec = ExportSpec(
        image=image,
        port=0,
        name="read",
        socket=directory / "nbd.sock",
        shared=4,
        cache=cache,
        read_only=True,
    )
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
    for info in processes():
        if not os.path.basename(info.argv[0]).startswith("qemu-nbd"):
            continue
        sockets = [b for a, b in itertools.pairwise(info.argv) if a == "-k"]
        if any(s.startswith(prefix) for s in sockets):
            log.warning("stopping a leftover read-only qemu-nbd pid=%d", info.pid)
            terminate_pid(info.pid)
            stopped += 1
    if scratch.exists():
        for leftover in scratch.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
    return stopped
