"""Repositories: validation, capacity, QCOW2 chains with relative backing files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sendense.common.errors import Conflict, InsufficientSpace, InvalidInput
from sendense.hub.service import Hub
from sendense.nbd.qemu_img import QemuImg
from tests.rig.nbd_data import expected_raw


def test_bad_repository_paths_are_refused(hub: Hub, tmp_path: Path, readonly_dir: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = {
        str(tmp_path / "missing"): "exist",
        str(a_file): "directory",
        "relative/path": "absolute",
        str(readonly_dir): "writable",
    }
    for path, key in cases.items():
        with pytest.raises(InvalidInput, match=key):
            hub.repos.add(path)
    assert hub.repos.list() == []


def test_capacity_and_duplicates(hub: Hub, repo_dir: Path) -> None:
    info = hub.repos.add(str(repo_dir), "main")
    cap = info.capacity
    assert cap.total > 0
    assert 0 <= cap.free <= cap.total
    assert 0 < cap.used <= cap.total
    with pytest.raises(Conflict):
        hub.repos.add(str(repo_dir), "other")
    with pytest.raises(InsufficientSpace) as full:
        hub.repos.ensure_fits(info, cap.free + 1)
    assert (full.value.http_status, full.value.exit_code) == (507, 7)
    hub.repos.ensure_fits(info, 1)


def test_incremental_names_its_parent_relatively_and_the_repository_can_move(
    hub: Hub, repo_dir: Path, tmp_path: Path
) -> None:
    repo = hub.repos.add(str(repo_dir))
    qemu_img = QemuImg()
    size = 64 << 20
    full = hub.repos.create_image(repo, "vm1/2000/full.qcow2", size, None)
    qemu_io_write(full, 0, 1 << 20, 0xA1)
    inc = hub.repos.create_image(repo, "vm1/2000/inc.qcow2", size, "vm1/2000/full.qcow2")
    qemu_io_write(inc, 8 << 20, 1 << 20, 0xB2)
    assert qemu_img.info(inc)["backing-filename"] == "full.qcow2"
    assert hub.repos.check(repo, "vm1/2000/inc.qcow2").clean

    moved = tmp_path / "moved"
    shutil.move(str(repo_dir), moved)
    raw = expected_raw(
        tmp_path / "expected.raw", size, [(0, b"\xa1" * (1 << 20)), (8 << 20, b"\xb2" * (1 << 20))]
    )
    assert qemu_img.compare(raw, moved / "vm1/2000/inc.qcow2", "raw", "qcow2")


def test_files_never_leave_the_repository(hub: Hub, repo_dir: Path) -> None:
    repo = hub.repos.add(str(repo_dir))
    with pytest.raises(InvalidInput, match="escape"):
        hub.repos.create_image(repo, "../escape.qcow2", 1 << 20, None)
    with pytest.raises(InvalidInput):
        hub.repos.disk_file("../x", 2000, "abc")
    assert not (repo_dir.parent / "escape.qcow2").exists()


def qemu_io_write(image: Path, offset: int, length: int, byte: int) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {byte} {offset} {length}", str(image)],
        check=True,
        capture_output=True,
    )
