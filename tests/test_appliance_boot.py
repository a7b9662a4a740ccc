"""The file-restore appliance's unpacked kernel: made from this machine's kernel,
refused in a cache that is not the hub user's own, and left to libguestfs when
the kernel cannot boot unpacked. (Launching with it: tests/test_file_restore.py.)"""

from __future__ import annotations

import gzip
import lzma
import os
import socket
from pathlib import Path

import pytest

from sendense.hub.files import boot
from sendense.hub.files.appliance import SOCKDIR_RECORD, remove_leftover_sockdirs


def test_the_machines_kernel_unpacks_to_an_elf_image_with_a_pvh_entry(tmp_path: Path) -> None:
    kernel = boot._newest_kernel()
    if kernel is None:
        pytest.skip("no kernel in /boot with its modules (make deps installs linux-image-amd64)")
    out = tmp_path / "vmlinux"
    assert boot.unpack_kernel(kernel, out)
    image = out.read_bytes()
    assert image.startswith(b"\x7fELF")
    assert any(note in image for note in boot.PVH_NOTES)
    assert len(image) > 2 * kernel.stat().st_size


def test_a_kernel_that_cannot_boot_unpacked_is_left_to_libguestfs(tmp_path: Path) -> None:
    packed = tmp_path / "vmlinuz-gzip"
    packed.write_bytes(b"\x00" * 512 + gzip.compress(b"\x7fELF" + bytes(4096)))
    assert not boot.unpack_kernel(packed, tmp_path / "out")
    no_pvh = tmp_path / "vmlinuz-xz"
    no_pvh.write_bytes(b"\x00" * 512 + lzma.compress(b"\x7fELF" + bytes(4096)))
    assert not boot.unpack_kernel(no_pvh, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_cache_other_users_can_write_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "shared"
    cache.mkdir()
    os.chmod(cache, 0o777)
    assert boot.appliance_path(tmp_path / "no-supermin", cache) is None
    assert list(cache.iterdir()) == []


def test_start_up_removes_only_the_socket_directories_appliances_recorded(
    tmp_path: Path,
) -> None:
    """A killed hub's appliance leaves its socket directory (libguestfs' mkdtemp);
    start-up removes what the session recorded, and nothing that is not one."""
    workroot, tmp = tmp_path / "browse", tmp_path / "tmp"
    tmp.mkdir()

    def session(name: str, sockdir: Path, content: str | None) -> Path:
        sockdir.mkdir()
        if content == "socket":
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(str(sockdir / "guestfsd.sock"))
        elif content is not None:
            (sockdir / "guestfsd.sock").write_text(content)
        (workroot / name).mkdir(parents=True)
        (workroot / name / SOCKDIR_RECORD).write_text(str(sockdir))
        return sockdir

    left = session("t1", tmp / "libguestfsAb12Cd", "socket")
    empty = session("t2", tmp / "libguestfsZZZZZZ", None)
    holds_a_file = session("t3", tmp / "libguestfsFile00", "not a socket")
    other_name = session("t4", tmp / "someone-else", "socket")
    (workroot / "t5").mkdir()
    (workroot / "t5" / SOCKDIR_RECORD).write_text(str(tmp / "libguestfsGone00"))

    assert remove_leftover_sockdirs(workroot) == 2
    assert not left.exists()
    assert not empty.exists()
    assert holds_a_file.exists()
    assert other_name.exists()
