"""The file-restore appliance's unpacked kernel: made from this machine's kernel,
refused in a cache that is not the hub user's own, and left to libguestfs when
the kernel cannot boot unpacked. (Launching with it: tests/test_file_restore.py.)"""

from __future__ import annotations

import gzip
import lzma
import os
from pathlib import Path

import pytest

from sendense.hub.files import boot


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
