"""One browsing session: a restore point's disks in a launched appliance, its
filesystems mounted, and the reads an operator asks of them (list, stat, find,
download a file or a folder).

Listings are paged: a folder's names are read once, sorted and kept for the
next pages (a few folders per session), and only a page's entries are looked up.
"""

from __future__ import annotations

import fnmatch
import os
import stat as mode_bits
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sendense.common.errors import InvalidInput, NotFound, SendenseError
from sendense.hub.files.appliance import Appliance, ApplianceFailed
from sendense.hub.files.archive import tar_to_zip
from sendense.hub.files.guest import DiskLayout, Filesystem, discover
from sendense.hub.files.paths import inside, resolve

CHUNK = 1 << 20
READ_CHUNK = 2 << 20  # the most one pread answers (the protocol's messages are < 4 MiB)
STAT_BATCH = 500  # names per lstatnslist call (one protocol message)
KEPT_FOLDERS = 4  # folders whose sorted names a session keeps for paging
FIND_LIMIT = 1000
KINDS = {
    mode_bits.S_IFREG: "file",
    mode_bits.S_IFDIR: "directory",
    mode_bits.S_IFLNK: "symlink",
    mode_bits.S_IFCHR: "char-device",
    mode_bits.S_IFBLK: "block-device",
    mode_bits.S_IFIFO: "fifo",
    mode_bits.S_IFSOCK: "socket",
}


@dataclass(frozen=True)
class Entry:
    name: str
    path: str
    type: str
    size: int
    mode: str  # "0644"
    uid: int
    gid: int
    mtime: datetime
    target: str | None  # a symbolic link's target, as written


@dataclass(frozen=True)
class Listing:
    fs: str
    path: str
    total: int
    offset: int
    entries: list[Entry]


@dataclass(frozen=True)
class Found:
    """A path resolved in a filesystem: where it is, its attributes, its entry."""

    fs: Filesystem
    path: str
    st: dict[str, Any]
    entry: Entry


@dataclass(frozen=True)
class Matches:
    fs: str
    paths: list[str]
    truncated: bool  # there were more than the limit


@dataclass(frozen=True)
class Download:
    name: str
    size: int | None  # None for an archive (its length is known once made)
    chunks: Iterator[bytes]


def _entry(folder: str, name: str, st: dict[str, Any], target: str | None) -> Entry:
    mode = int(st["st_mode"])
    return Entry(
        name=name,
        path=(folder.rstrip("/") + "/" + name) if name else folder,
        type=KINDS.get(mode_bits.S_IFMT(mode), "other"),
        size=int(st["st_size"]),
        mode=f"{mode_bits.S_IMODE(mode):04o}",
        uid=int(st["st_uid"]),
        gid=int(st["st_gid"]),
        mtime=datetime.fromtimestamp(int(st["st_mtime_sec"]), UTC),
        target=target,
    )


class BrowseSession:
    def __init__(self, task_id: str, point_id: str, appliance: Appliance) -> None:
        self.task_id = task_id
        self.point_id = point_id
        self.appliance = appliance
        self.ready = threading.Event()
        self.error: SendenseError | None = None
        self.disks: list[DiskLayout] = []
        self.filesystems: list[Filesystem] = []
        self.opened_at = datetime.now(UTC)
        self.last_used = time.monotonic()
        self._folders: OrderedDict[tuple[str, str], list[str]] = OrderedDict()
        self._streams = 0
        self._streams_lock = threading.Lock()

    def start(self, drives: list[tuple[Path, str]], disk_keys: list[int]) -> str:
        """Launch, then discover; says how long each took."""
        started = time.monotonic()
        self.appliance.launch(drives)
        launched = time.monotonic()
        self.disks, self.filesystems = discover(self.appliance, disk_keys)
        return (
            f"appliance {launched - started:.1f} s, filesystems {time.monotonic() - launched:.1f} s"
        )

    @property
    def busy(self) -> bool:
        return self._streams > 0

    def touch(self) -> None:
        self.last_used = time.monotonic()

    # -- paths -------------------------------------------------------------
    def filesystem(self, fs_id: str | None) -> Filesystem:
        readable = [f for f in self.filesystems if f.mounted]
        if fs_id is None or fs_id == "":
            if len(readable) == 1:
                return readable[0]
            names = ", ".join(f.id for f in readable) or "none"
            raise InvalidInput(f"name the filesystem (fs): this point has {names}")
        for fs in self.filesystems:
            if fs.id == fs_id:
                if not fs.mounted:
                    raise InvalidInput(f"{fs.id} cannot be read: {fs.error}")
                return fs
        raise NotFound(f"no filesystem {fs_id} in this restore point")

    def _lstat(self, fs: Filesystem, path: str) -> dict[str, Any] | None:
        g = self.appliance.handle()
        try:
            st: dict[str, Any] = self.appliance.call(g.lstatns, inside(fs.mount, path))
        except ApplianceFailed:
            if self.appliance.failed:
                raise
            return None
        return st

    def _resolve(self, fs: Filesystem, path: str, follow_last: bool = True) -> str:
        g = self.appliance.handle()

        def is_link(p: str) -> bool | None:
            st = self._lstat(fs, p)
            return None if st is None else mode_bits.S_ISLNK(int(st["st_mode"]))

        def readlink(p: str) -> str:
            return str(self.appliance.call(g.readlink, inside(fs.mount, p)))

        return resolve(path, is_link, readlink, follow_last=follow_last)

    # -- reads -------------------------------------------------------------
    def _find_path(self, fs_id: str | None, path: str, follow_last: bool) -> Found:
        fs = self.filesystem(fs_id)
        real = self._resolve(fs, path, follow_last=follow_last)
        st = self._lstat(fs, real)
        if st is None:
            raise NotFound(f"{path} does not exist")
        target = None
        if not follow_last and mode_bits.S_ISLNK(int(st["st_mode"])):
            target = str(
                self.appliance.call(self.appliance.handle().readlink, inside(fs.mount, real))
            )
        folder, name = real.rsplit("/", 1)
        return Found(fs, real, st, _entry(folder or "/", name, st, target))

    def stat(self, fs_id: str | None, path: str) -> Entry:
        """`path` itself (a symbolic link as a link, with its target)."""
        return self._find_path(fs_id, path, follow_last=False).entry

    def locate(self, fs_id: str | None, path: str) -> Found:
        """What `path` leads to, its symbolic links followed."""
        return self._find_path(fs_id, path, follow_last=True)

    def _names(self, fs: Filesystem, folder: str) -> list[str]:
        key = (fs.id, folder)
        names = self._folders.get(key)
        if names is None:
            g = self.appliance.handle()
            found = self.appliance.call(g.readdir, inside(fs.mount, folder))
            names = sorted(e["name"] for e in found if e["name"] not in (".", ".."))
            self._folders[key] = names
            while len(self._folders) > KEPT_FOLDERS:
                self._folders.popitem(last=False)
        else:
            self._folders.move_to_end(key)
        return names

    def ls(self, fs_id: str | None, path: str, offset: int = 0, limit: int = 1000) -> Listing:
        fs = self.filesystem(fs_id)
        folder = self._resolve(fs, path)
        st = self._lstat(fs, folder)
        if st is None or not mode_bits.S_ISDIR(int(st["st_mode"])):
            raise InvalidInput(f"{path} is not a folder")
        names = self._names(fs, folder)
        page = names[offset : offset + limit]
        g = self.appliance.handle()
        where = inside(fs.mount, folder)
        entries: list[Entry] = []
        for start in range(0, len(page), STAT_BATCH):
            batch = page[start : start + STAT_BATCH]
            stats = self.appliance.call(g.lstatnslist, where, batch)
            links = [
                n for n, s in zip(batch, stats, strict=True) if mode_bits.S_ISLNK(int(s["st_mode"]))
            ]
            targets = (
                dict(zip(links, self.appliance.call(g.readlinklist, where, links), strict=True))
                if links
                else {}
            )
            entries += [
                _entry(folder, n, s, targets.get(n)) for n, s in zip(batch, stats, strict=True)
            ]
        return Listing(fs.id, folder, len(names), offset, entries)

    def find(self, fs_id: str | None, path: str, pattern: str, limit: int = FIND_LIMIT) -> Matches:
        """Paths under `path` whose name matches `pattern` (shell wildcards), at
        most `limit`, and whether there were more."""
        fs = self.filesystem(fs_id)
        folder = self._resolve(fs, path)
        st = self._lstat(fs, folder)
        if st is None or not mode_bits.S_ISDIR(int(st["st_mode"])):
            raise InvalidInput(f"{path} is not a folder")
        listing = self.appliance.workdir / f"find-{os.getpid()}-{threading.get_ident()}"
        try:
            self.appliance.call(
                self.appliance.handle().find0, inside(fs.mount, folder), str(listing)
            )
            found: list[str] = []
            with listing.open("rb") as handle:
                for raw in handle.read().split(b"\0"):
                    relative = raw.decode(errors="replace").lstrip("/")
                    if relative and fnmatch.fnmatchcase(relative.rsplit("/", 1)[-1], pattern):
                        if len(found) == limit:
                            return Matches(fs.id, found, True)
                        found.append(folder.rstrip("/") + "/" + relative)
            return Matches(fs.id, found, False)
        finally:
            listing.unlink(missing_ok=True)

    # -- downloads -----------------------------------------------------------
    def download(
        self,
        found: Found,
        archive: str = "tar",
        byte_range: tuple[int, int] | None = None,
    ) -> Download:
        """A located file's bytes (all, or `byte_range` [first, last]), or a folder
        as a tar or zip; anything else (a device, a fifo) is refused."""
        mode = int(found.st["st_mode"])
        where = inside(found.fs.mount, found.path)
        g = self.appliance.handle()
        name = found.path.rsplit("/", 1)[1] or (found.fs.label or "filesystem")
        if mode_bits.S_ISREG(mode):
            size = int(found.st["st_size"])
            first, last = byte_range or (0, size - 1)
            count = max(0, last - first + 1)
            return Download(name, count, self._read(where, first, count))
        if not mode_bits.S_ISDIR(mode):
            raise InvalidInput(f"{found.path} is not a file or a folder")
        tar = self._stream(lambda f: g.tar_out(where, f, numericowner=True))
        if archive == "zip":
            return Download(f"{name}.zip", None, tar_to_zip(tar))
        return Download(f"{name}.tar", None, tar)

    def _read(self, where: str, first: int, count: int) -> Iterator[bytes]:
        """`count` bytes of a file from `first`, in the largest reads the protocol
        takes (each one call under the watchdog; three times the rate of
        libguestfs' streamed download, which moves 8 KiB messages)."""
        g = self.appliance.handle()
        self._count_stream(+1)
        try:
            done = 0
            while done < count:
                chunk: bytes = self.appliance.call(
                    g.pread, where, min(READ_CHUNK, count - done), first + done
                )
                if not chunk:
                    raise SendenseError(f"{where} ended {count - done} bytes before its size")
                done += len(chunk)
                self.touch()
                yield chunk
        finally:
            self._count_stream(-1)
            self.touch()

    def _count_stream(self, step: int) -> None:
        """Downloads run in the server's threads: the count of those under way
        (a busy session is not idle) changes under a lock."""
        with self._streams_lock:
            self._streams += step

    def _stream(self, producer: Callable[[str], object]) -> Iterator[bytes]:
        """What `producer` writes to a pipe, as it comes (a thread runs the call)."""
        failure: list[SendenseError] = []
        read_end, write_end = os.pipe()

        def run() -> None:
            try:
                # The reader calls `progress` as bytes flow: the watchdog fires when
                # none come for the call timeout.
                self.appliance.call(producer, f"/dev/fd/{write_end}")
            except SendenseError as exc:
                failure.append(exc)
            finally:
                os.close(write_end)

        self._count_stream(+1)
        writer = threading.Thread(target=run, name="appliance-download", daemon=True)
        writer.start()
        try:
            with os.fdopen(read_end, "rb", buffering=0) as reader:
                while chunk := reader.read(CHUNK):
                    self.appliance.progress()
                    self.touch()
                    yield chunk
        finally:
            writer.join()
            self._count_stream(-1)
            self.touch()
        if failure:
            raise failure[0]
