"""The chaos repository: a directory of a small tmpfs (`store`), bind-mounted at
the repository's path. Unmounting the bind mount is a share not mounted at
start-up, with its files kept; a ballast file in the tmpfs fills it up."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from tests.rig.vmware_vms import MiB


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Storage:
    def __init__(self, root: Path, size_mib: int = 512) -> None:
        self.store = root / "store"
        self.repo = root / "repo"
        self.size_mib = size_mib
        self.ballast = self.store / "ballast"
        self.mounted: list[Path] = []

    def mount(self) -> None:
        self.store.mkdir(parents=True)
        self.repo.mkdir()
        _run("mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m", "tmpfs", str(self.store))
        self.mounted.append(self.store)
        (self.store / "repo").mkdir()
        self.remount()

    def unmount(self) -> None:
        """The repository's share goes away: its path is an empty directory."""
        _run("umount", str(self.repo))
        self.mounted.remove(self.repo)

    def remount(self) -> None:
        _run("mount", "--bind", str(self.store / "repo"), str(self.repo))
        self.mounted.append(self.repo)

    def is_mounted(self) -> bool:
        return self.repo in self.mounted

    def fill(self, leave_bytes: int) -> None:
        """Write a ballast file until only about `leave_bytes` are free."""
        st = os.statvfs(self.store)
        size = max(st.f_bavail * st.f_frsize - leave_bytes, 0)
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        chunk = b"\xba" * MiB
        try:
            while size > 0:
                written = os.write(fd, chunk[: min(size, MiB)])
                size -= written
        except OSError as exc:
            # A backup running meanwhile took some of it first: the repository is
            # full all the same.
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)

    def drain(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        st = os.statvfs(self.store)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        """Every mount made, in reverse; each tried even if another fails."""
        for path in reversed(self.mounted):
            subprocess.run(["umount", "--lazy", str(path)], check=False, capture_output=True)
        self.mounted.clear()
