"""Guest disks made with the real tools, without root: sfdisk writes partition
tables and cryptsetup a LUKS volume into files; libguestfs (its own appliance)
makes LVM and filesystems straight in a simulator VM's flat files; `mke2fs -d`
fills an ext4 image from a folder on the host (100,000 names in a second, where
the appliance takes a minute), which is then copied into its partition, holes
kept.

`Tree` is what a test expects a filesystem to hold at a point: path -> bytes
for files, path -> "->target" for symbolic links, path -> None for folders.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sendense.hub.files.boot import boot_fixed

MiB = 1 << 20
SECTOR = 512
Tree = dict[str, bytes | str | None]
LUKS_KEY = "file restore test key"  # a test's throwaway volume


@contextmanager
def appliance(disks: list[Path], workdir: Path) -> Iterator[Any]:
    """A writable appliance over raw `disks` (sda, sdb... in order)."""
    import guestfs  # type: ignore[import-untyped]

    g: Any = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
    g.set_backend("direct")
    boot_fixed(g)  # the hub's own quicker boot
    g.set_backend_settings(["force_tcg"])
    workdir.mkdir(parents=True, exist_ok=True)
    g.set_tmpdir(str(workdir))
    for disk in disks:
        g.add_drive_opts(str(disk), format="raw", readonly=False)
    try:
        g.launch()
        yield g
        g.sync()
        g.umount_all()
        g.shutdown()
    finally:
        g.close()


def partition(disk: Path, label: str, parts: list[str]) -> None:
    """A partition table written into `disk` by sfdisk (no kernel, no root):
    `label` "gpt" or "dos", each part an sfdisk line ("start=2048, size=4096")."""
    script = "\n".join([f"label: {label}", *parts]) + "\n"
    subprocess.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)],
        input=script.encode(),
        check=True,
        capture_output=True,
    )


def luks_image(image: Path, size: int, key: str) -> None:
    """A LUKS2 volume of `size` bytes in a file (cryptsetup; PBKDF2 at its least
    iterations: a test's throwaway volume, formatted in a moment)."""
    with image.open("wb") as handle:
        handle.truncate(size)
    subprocess.run(
        [
            "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
            "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
            "--key-file", "-", str(image),
        ],
        input=key.encode(),
        check=True,
        capture_output=True,
    )  # fmt: skip


def big_file(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def write_tree(g: Any, root: str, tree: Tree) -> None:
    """Make `tree` under `root` of what is mounted (folders first)."""
    for path, content in sorted(tree.items(), key=lambda item: (item[1] is not None, item[0])):
        where = root.rstrip("/") + path
        if content is None:
            g.mkdir_p(where)
        elif isinstance(content, str):
            g.ln_s(content.removeprefix("->"), where)
        else:
            g.write(where, content)


def ext4_image(tree_dir: Path, image: Path, size: int) -> None:
    """An ext4 filesystem of `size` bytes holding `tree_dir` (mke2fs -d)."""
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "rootfs",
            "-d",
            str(tree_dir),
            str(image),
            f"{size // 1024}k",
        ],
        check=True,
        env=os.environ | {"MKE2FS_CONFIG": "/etc/mke2fs.conf"},
    )


def btrfs_image(tree_dir: Path, image: Path) -> None:
    """The smallest Btrfs filesystem holding `tree_dir` (mkfs.btrfs --rootdir)."""
    image.touch()
    subprocess.run(
        [
            "mkfs.btrfs",
            "-q",
            "-f",
            "-m",
            "single",
            "--shrink",
            "--rootdir",
            str(tree_dir),
            str(image),
        ],
        check=True,
        capture_output=True,
    )


def bitlocker_signature(fve_offset: int = 64 * 1024) -> bytes:
    """A FAKE BitLocker volume's start: the boot sector (jump, "-FVE-FS-", the
    metadata's offset at byte 176) and the FVE metadata block it points to, as
    util-linux's blkid recognises them. Nothing is encrypted: Windows' tools,
    which make real ones, cannot run here; detection is what is tested."""
    sector = bytearray(SECTOR)
    sector[0:11] = b"\xeb\x58\x90-FVE-FS-"
    sector[176:184] = fve_offset.to_bytes(8, "little")
    sector[510:512] = b"\x55\xaa"
    metadata = b"-FVE-FS-" + (0).to_bytes(2, "little") + (2).to_bytes(2, "little")  # version 2
    return bytes(sector) + bytes(fve_offset - SECTOR) + metadata


def data_extents(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each run of data in `path`, its holes left out."""
    extents, position, size = [], 0, path.stat().st_size
    with path.open("rb") as handle:
        while position < size:
            try:
                start = os.lseek(handle.fileno(), position, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(handle.fileno(), start, os.SEEK_HOLE)
            extents.append((start, end - start))
            position = end
    return extents


def copy_into(image: Path, disk: Path, offset: int) -> None:
    """`image` written into `disk` at `offset`, its holes left holes."""
    with image.open("rb") as src, disk.open("r+b") as dst:
        for start, length in data_extents(image):
            src.seek(start)
            dst.seek(offset + start)
            while length:
                chunk = src.read(min(length, 8 * MiB))
                dst.write(chunk)
                length -= len(chunk)


def materialise(tree: Tree, folder: Path) -> None:
    """`tree` as files on the host (what mke2fs -d copies)."""
    for path, content in sorted(tree.items(), key=lambda item: (item[1] is not None, item[0])):
        where = folder / path.lstrip("/")
        if content is None:
            where.mkdir(parents=True, exist_ok=True)
        elif isinstance(content, str):
            where.symlink_to(content.removeprefix("->"))
        else:
            where.write_bytes(content)
