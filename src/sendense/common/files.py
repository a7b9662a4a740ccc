"""Files the hub and the node create are theirs alone: 0600 files, 0700
directories, whatever the umask of the shell or unit that started them (disk
images, the SQLite database, logs, keys, state files)."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077


def private_umask() -> None:
    """Every file this process and its children (qemu-img, qemu-nbd, sshd, ssh)
    create from now on is readable by its user only."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """`path` exists and is 0700, even when an earlier run or the operator made it
    with looser bits."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path
