"""Repositories: directories of QCOW2 chains, their capacity, and the files in them.

Layout: `<repo>/<vm id>/<disk key>/<restore point disk id>.qcow2`. Every part is
made by the hub (database ids and integers), never from a VM's name; an
incremental names its parent relative to its own directory, so a repository
can be moved as a whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from sendense.common.errors import (
    Conflict,
    InsufficientSpace,
    InvalidInput,
    NotFound,
    Unavailable,
)
from sendense.common.names import safe_label
from sendense.hub.db.database import Database
from sendense.hub.db.models import (
    ACTIVE_JOB_STATES,
    Job,
    PointStatus,
    Repository,
    RestorePoint,
    RestorePointDisk,
)
from sendense.nbd.qemu_img import CheckResult, QemuImg

log = logging.getLogger(__name__)
# Written when a repository is added; an NFS/CIFS share that is not mounted shows
# an empty mountpoint without it, and backups must not land on the local disk.
MARKER = ".sendense-repository"
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Capacity:
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class RepositoryInfo:
    id: str
    name: str
    path: Path
    capacity: Capacity


def capacity_of(path: Path) -> Capacity:
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    return Capacity(
        total=total, used=total - st.f_bfree * st.f_frsize, free=st.f_bavail * st.f_frsize
    )


def supports_direct_io(path: Path) -> bool:
    """qemu-nbd --cache=none needs O_DIRECT, which tmpfs refuses."""
    fd, name = tempfile.mkstemp(prefix=".odirect-", dir=path)
    os.close(fd)
    try:
        fd = os.open(name, os.O_RDWR | getattr(os, "O_DIRECT", 0))
        os.close(fd)
        return True
    except OSError:
        return False
    finally:
        os.unlink(name)


def sync_file(path: Path) -> None:
    """fsync a file and the directory that names it: what a power loss leaves is what
    was read back after this."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def within_roots(path: Path, roots: Sequence[Path]) -> bool:
    """Whether `path`, with symlinks followed and `..` removed, is one of `roots` (each
    resolved the same way) or lies under one."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(root)) for root in roots)


def _check_directory(raw: str, roots: Sequence[Path]) -> Path:
    path = Path(raw)
    if not path.is_absolute():
        raise InvalidInput(f"repository path {raw!r} must be absolute")
    # Before anything else is said about the path: an answer about a directory
    # outside the roots would tell a caller what exists there.
    if not within_roots(path, roots):
        allowed = ", ".join(str(r) for r in roots)
        raise InvalidInput(
            f"repository path {raw} is not under a repository root ({allowed}); "
            "an administrator adds roots with the hub setting repository_roots"
        )
    path = Path(os.path.realpath(path))
    if not path.exists():
        raise InvalidInput(f"repository path {raw} does not exist")
    if not path.is_dir():
        raise InvalidInput(f"repository path {raw} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise InvalidInput(f"repository path {raw} is not writable: {exc.strerror}") from exc
    return path


def _has_marker(path: Path, repo_id: str) -> bool:
    """Whether the directory holds the marker written when repository `repo_id` was
    added (not there: a share not mounted, or the directory gone)."""
    try:
        return (path / MARKER).read_text().strip() == repo_id
    except OSError:
        return False


class RepositoryService:
    def __init__(
        self, db: Database, qemu_img: QemuImg, min_free_bytes: int, roots: Sequence[Path]
    ) -> None:
        self.db = db
        self.qemu_img = qemu_img
        self.min_free_bytes = min_free_bytes
        self.roots = tuple(roots)

    def add(self, path: str, name: str | None = None) -> RepositoryInfo:
        """Registers a directory under one of the repository roots."""
        resolved = _check_directory(path, self.roots)
        label = name or safe_label(resolved.name or "root")
        if not _REPO_NAME.match(label):
            raise InvalidInput(
                f"repository name {label!r}: up to 64 letters, digits, '.', '_' and '-'"
            )
        try:
            with self.db.session() as s:
                repo = Repository(name=label, path=str(resolved))
                s.add(repo)
                s.flush()
                repo_id = repo.id
        except IntegrityError as exc:
            raise Conflict(f"a repository named {label!r} or at {resolved} exists") from exc
        (resolved / MARKER).write_text(repo_id + "\n")
        log.info("repository added id=%s name=%s path=%s", repo_id, label, resolved)
        return RepositoryInfo(repo_id, label, resolved, capacity_of(resolved))

    def list(self) -> list[RepositoryInfo]:
        with self.db.session() as s:
            rows = s.scalars(select(Repository).order_by(Repository.created_at)).all()
        return [self._info(r) for r in rows]

    def outside_roots(self) -> tuple[RepositoryInfo, ...]:
        """Repositories registered before the roots were set (or since moved out of
        them): they keep working; the hub warns at each start."""
        return tuple(r for r in self.list() if not within_roots(r.path, self.roots))

    def get(self, ref: str | None = None, check_mounted: bool = True) -> RepositoryInfo:
        """By id or name; without a reference, the oldest repository. Unless told not
        to, refuses a repository whose marker is missing (share not mounted)."""
        with self.db.session() as s:
            query = select(Repository).order_by(Repository.created_at)
            if ref:
                query = query.where((Repository.id == ref) | (Repository.name == ref))
            row = s.scalars(query).first()
        if row is None:
            if ref:
                raise NotFound(f"repository {ref!r} does not exist")
            raise NotFound("no repository is registered: add one with `sendense repo add PATH`")
        if check_mounted and not _has_marker(Path(row.path), row.id):
            raise Unavailable(
                f"repository {row.name} at {row.path} is not available (not mounted?): "
                f"its {MARKER} is missing"
            )
        return self._info(row)

    def mounted(self) -> tuple[RepositoryInfo, ...]:
        """The repositories whose marker is in place (a share not mounted, or a
        directory gone, is left out)."""
        return tuple(r for r in self.list() if _has_marker(r.path, r.id))

    @staticmethod
    def _info(row: Repository) -> RepositoryInfo:
        path = Path(row.path)
        try:
            cap = capacity_of(path)
        except OSError:
            cap = Capacity(0, 0, 0)
        return RepositoryInfo(row.id, row.name, path, cap)

    def room(self, repo: RepositoryInfo, job_id: str | None = None) -> int:
        """The bytes a job may still write: free space less the reserve and what
        the other backups running on the repository may still write."""
        free = capacity_of(repo.path).free
        return max(0, free - self.min_free_bytes - self.promised(repo, job_id))

    def ensure_fits(self, repo: RepositoryInfo, required: int, job_id: str | None = None) -> None:
        free = capacity_of(repo.path).free
        promised = self.promised(repo, job_id)
        if free - self.min_free_bytes - promised < required:
            others = f", {promised} of them promised to backups running on it" if promised else ""
            raise InsufficientSpace(
                f"repository {repo.name} has {free} bytes free{others}; the job needs "
                f"{required} bytes plus a reserve of {self.min_free_bytes}"
            )

    def promised(self, repo: RepositoryInfo, job_id: str | None = None) -> int:
        """What the backups running on `repo`, other than `job_id`, may still write:
        each layer's reservation less what its file already takes (the free
        space already counts that part)."""
        with self.db.session() as s:
            rows = s.execute(
                select(RestorePointDisk.file_path, RestorePointDisk.reserved_bytes)
                .join(RestorePoint)
                .join(Job, Job.id == RestorePoint.job_id)
                .where(
                    RestorePoint.status == PointStatus.INCOMPLETE,
                    RestorePoint.repository_id == repo.id,
                    Job.state.in_(ACTIVE_JOB_STATES),
                    Job.id != (job_id or ""),
                    RestorePointDisk.reserved_bytes.is_not(None),
                )
            ).all()
        return sum(
            max(0, (reserved or 0) - _allocated(repo.path / path)) for path, reserved in rows
        )

    @staticmethod
    def resolve(repo: RepositoryInfo, relative: str) -> Path:
        """The absolute path of a repository file; refuses anything that leaves it."""
        path = (repo.path / relative).resolve()
        if not path.is_relative_to(repo.path.resolve()):
            raise InvalidInput(f"path {relative!r} leaves repository {repo.name}")
        return path

    @staticmethod
    def disk_file(vm_id: str, disk_key: int, point_disk_id: str) -> str:
        if not vm_id.isalnum() or not point_disk_id.isalnum():
            raise InvalidInput("repository file names are made of database ids only")
        return f"{vm_id}/{int(disk_key)}/{point_disk_id}.qcow2"

    def create_image(
        self, repo: RepositoryInfo, relative: str, size: int, parent_relative: str | None
    ) -> Path:
        path = self.resolve(repo, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        backing = None
        if parent_relative is not None:
            parent = self.resolve(repo, parent_relative)
            backing = os.path.relpath(parent, path.parent)
        self.qemu_img.create(path, size, backing=backing)
        return path

    def check(self, repo: RepositoryInfo, relative: str) -> CheckResult:
        return self.qemu_img.check(self.resolve(repo, relative))

    def remove_image(self, repo: RepositoryInfo, relative: str) -> None:
        path = self.resolve(repo, relative)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            log.info("removed image %s", path)
        for directory in (path.parent, path.parent.parent):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty


def _allocated(path: Path) -> int:
    """The bytes a file takes on its filesystem (0: no file yet)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0
