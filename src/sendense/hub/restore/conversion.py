"""Disk conversion: one disk of a restore point as a standalone raw, QCOW2 or VMDK
(streamOptimized, the variant vSphere imports) file, for a download or a file
the CLI writes (`sendense restore export`).

`qemu-img convert` of the point's top file reads through the backing chain. The
file is written as `.<name>.*.partial` beside its final name and renamed once
complete and flushed, so a crash never leaves half an export under the final name.
An existing file is replaced only when asked, and nothing is ever written inside
a repository. Exports for an HTTP download go to their own directory in the
scratch directory, removed afterwards (`discard`) and at start-up.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sendense.common.errors import Conflict, InsufficientSpace, InvalidInput, NotFound, Unavailable
from sendense.hub.db.database import Database
from sendense.hub.db.models import PointStatus
from sendense.hub.repository.repositories import (
    RepositoryService,
    capacity_of,
    supports_direct_io,
)
from sendense.hub.restore.points import restorable_point

log = logging.getLogger(__name__)
FORMATS = ("raw", "qcow2", "vmdk")
EXTENSIONS = {"raw": "img", "qcow2": "qcow2", "vmdk": "vmdk"}
_OUTPUT_OPTIONS = {
    "raw": ["-O", "raw"],
    "qcow2": ["-O", "qcow2"],
    # streamOptimized is what vSphere imports (OVF/OVA, Content Library); LSI Logic
    # is the adapter vSphere gives a SCSI disk by default.
    "vmdk": ["-O", "vmdk", "-o", "subformat=streamOptimized,adapter_type=lsilogic"],
}
Progress = Callable[[float], None]


@dataclass(frozen=True)
class DiskSource:
    """A disk of a complete restore point: the top of its chain."""

    restore_point_id: str
    disk_key: int
    image: Path
    virtual_size: int
    # qemu-nbd cache mode for reading it (O_DIRECT where the filesystem allows).
    cache: str


@dataclass(frozen=True)
class ConversionResult:
    path: Path
    format: str
    virtual_size: int
    file_size: int
    seconds: float


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskConverter:
    def __init__(
        self,
        db: Database,
        repos: RepositoryService,
        scratch: Path,
        max_running: int = 2,
        reserve_bytes: int = 0,
    ) -> None:
        """`max_running`: conversions at once (each reads a whole chain and writes a
        whole disk); `reserve_bytes`: free space a conversion must leave."""
        self.db = db
        self.repos = repos
        self.scratch = scratch
        self.max_running = max_running
        self.reserve_bytes = reserve_bytes
        self._slots = threading.BoundedSemaphore(max_running)

    def source(self, point_id: str, disk_key: int) -> DiskSource:
        """The disk to read; refuses an unknown, unfinished or invalid restore point."""
        with self.db.session() as s:
            point = restorable_point(s, point_id)
            disk = next((d for d in point.disks if d.disk_key == disk_key), None)
            if disk is None:
                keys = ", ".join(str(d.disk_key) for d in point.disks)
                raise NotFound(f"restore point {point_id} has no disk {disk_key} (disks: {keys})")
            if disk.status != PointStatus.COMPLETE:
                raise Conflict(
                    f"disk {disk_key} of restore point {point_id} is {disk.status.value}"
                )
            repo_id, relative, size = point.repository_id, disk.file_path, disk.virtual_size
        repo = self.repos.get(repo_id)
        image = self.repos.resolve(repo, relative)
        if not image.exists():
            raise Conflict(f"disk {disk_key} of restore point {point_id}: {relative} is missing")
        cache = "none" if supports_direct_io(repo.path) else "writeback"
        return DiskSource(point_id, disk_key, image, size, cache)

    def export(
        self,
        point_id: str,
        disk_key: int,
        fmt: str,
        output: Path,
        force: bool = False,
        progress: Progress | None = None,
    ) -> ConversionResult:
        """Write the disk to `output` (an absolute path outside every repository)."""
        _check_format(fmt)
        source = self.source(point_id, disk_key)
        final = self.check_output(output, force)
        started = time.monotonic()
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
        os.close(fd)
        partial = Path(name)
        try:
            result = self._convert(source, partial, fmt, progress)
            _fsync(partial)
            os.replace(partial, final)
            _fsync(final.parent)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        seconds = time.monotonic() - started
        log.info(
            "disk exported restore_point=%s disk=%d format=%s path=%s seconds=%.1f",
            point_id,
            disk_key,
            fmt,
            final,
            seconds,
        )
        return ConversionResult(final, fmt, result.virtual_size, result.file_size, seconds)

    def check_output(self, output: Path, force: bool) -> Path:
        """The final path of an export; refuses a missing directory, a repository,
        and an existing file unless `force`."""
        if not output.is_absolute():
            raise InvalidInput(f"export path {output} must be absolute")
        directory = output.parent.resolve()
        if not directory.is_dir():
            raise InvalidInput(f"directory {output.parent} does not exist")
        final = directory / output.name
        for repo in self.repos.list():
            root = repo.path.resolve()
            if final.resolve().is_relative_to(root) or directory.is_relative_to(root):
                raise InvalidInput(f"{final} lies inside repository {repo.name}: export elsewhere")
        if final.is_dir():
            raise InvalidInput(f"{final} is a directory")
        if (final.exists() or final.is_symlink()) and not force:
            raise Conflict(f"{final} exists: --force replaces it")
        return final

    def to_scratch(
        self, point_id: str, disk_key: int, fmt: str, progress: Progress | None = None
    ) -> ConversionResult:
        """An export in a directory of its own under scratch; `discard` removes it."""
        _check_format(fmt)
        source = self.source(point_id, disk_key)
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory = Path(tempfile.mkdtemp(prefix="export-", dir=self.scratch))
        try:
            # Read once, then deleted: not worth a sync.
            return self._convert(source, directory / f"disk.{EXTENSIONS[fmt]}", fmt, progress)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def discard(self, result: ConversionResult) -> None:
        directory = result.path.parent
        if directory.parent.resolve() == self.scratch.resolve():
            shutil.rmtree(directory, ignore_errors=True)

    def _convert(
        self, source: DiskSource, target: Path, fmt: str, progress: Progress | None
    ) -> ConversionResult:
        started = time.monotonic()
        step = [0.0]

        def report(percent: float) -> None:
            if percent >= step[0] or percent >= 100:
                step[0] = percent + 10
                log.info(
                    "disk conversion restore_point=%s disk=%d progress=%.0f%%",
                    source.restore_point_id,
                    source.disk_key,
                    percent,
                )
            if progress is not None:
                progress(percent)

        if not self._slots.acquire(blocking=False):
            raise Unavailable(
                f"{self.max_running} disk conversions are running: retry when one has ended"
            )
        try:
            self._ensure_room(source, target.parent)
            self.repos.qemu_img.convert(source.image, target, _OUTPUT_OPTIONS[fmt], report)
        finally:
            self._slots.release()
        seconds = time.monotonic() - started
        return ConversionResult(target, fmt, source.virtual_size, target.stat().st_size, seconds)

    def _ensure_room(self, source: DiskSource, directory: Path) -> None:
        """What the chain holds (`qemu-img measure`: a raw or VMDK copy needs no
        more on a filesystem with holes) must fit beside the reserve."""
        needed = self.repos.qemu_img.measure(source.image)
        free = capacity_of(directory).free
        if free - needed < self.reserve_bytes:
            raise InsufficientSpace(
                f"{directory} has {free} bytes free; the disk needs {needed} bytes "
                f"plus a reserve of {self.reserve_bytes}"
            )


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidInput(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
