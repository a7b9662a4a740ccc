"""QemuImg: map parsing, conversion progress, and formats that are never guessed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sendense.common.errors import ToolFailed
from sendense.nbd.qemu_img import QemuImg, data_extents

MiB = 1 << 20


def test_map_entries_become_merged_data_extents() -> None:
    entries = [
        {"start": 0, "length": 4, "data": True, "zero": False},
        {"start": 4, "length": 4, "data": True, "zero": False},  # adjacent: merged
        {"start": 8, "length": 8, "data": False, "zero": True},  # hole
        {"start": 16, "length": 4, "data": True, "zero": True},  # zero cluster
        {"start": 20, "length": 2, "data": True, "zero": False},
    ]
    assert data_extents(entries) == [(0, 8), (20, 22)]
    assert data_extents([]) == []


def write(image: Path, pattern: int, offset: int, length: int) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", str(image)],
        check=True,
        capture_output=True,
    )


def test_map_reads_through_the_chain(tmp_path: Path) -> None:
    qemu_img = QemuImg()
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img.create(base, 16 * MiB)
    write(base, 1, 0, MiB)
    qemu_img.create(top, 16 * MiB, backing="base.qcow2")
    write(top, 2, 8 * MiB, 2 * MiB)
    assert qemu_img.map(top) == [(0, MiB), (8 * MiB, 10 * MiB)]


def test_convert_reports_rising_progress_and_reads_the_same(tmp_path: Path) -> None:
    qemu_img = QemuImg()
    image, out = tmp_path / "a.qcow2", tmp_path / "a.raw"
    qemu_img.create(image, 64 * MiB)
    write(image, 7, 3 * MiB, 40 * MiB)
    seen: list[float] = []
    qemu_img.convert(image, out, ["-O", "raw"], seen.append)
    assert seen == sorted(seen)
    assert seen[-1] == 100.0
    assert qemu_img.compare(out, image, "raw", "qcow2")


def test_convert_failure_names_what_qemu_img_said(tmp_path: Path) -> None:
    missing = tmp_path / "missing.qcow2"
    with pytest.raises(ToolFailed) as failed:
        QemuImg().convert(missing, tmp_path / "x.raw", ["-O", "raw"])
    assert failed.value.returncode == 1
    assert "missing.qcow2" in failed.value.stderr


def test_a_format_is_never_guessed_from_the_content(tmp_path: Path) -> None:
    """A raw disk whose guest wrote a QCOW2 header is still a raw disk."""
    qemu_img = QemuImg()
    inner = tmp_path / "inner.qcow2"
    (tmp_path / "secret").write_bytes(b"hub secret")
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(tmp_path / "secret"),
            str(inner),
            str(MiB),
        ],
        check=True,
    )
    raw = tmp_path / "guest.raw"
    raw.write_bytes(inner.read_bytes().ljust(MiB, b"\0"))
    assert qemu_img.info(raw, "raw")["format"] == "raw"
    assert "backing-filename" not in qemu_img.info(raw, "raw")


def test_an_image_of_another_size_is_not_the_same(tmp_path: Path) -> None:
    """A restore that came back short (or long), with zeroes where the rest was,
    is not the disk that was backed up."""
    qemu_img = QemuImg()
    short, long = tmp_path / "short.qcow2", tmp_path / "long.qcow2"
    qemu_img.create(short, 4 * MiB)
    qemu_img.create(long, 8 * MiB)
    write(short, 3, 0, MiB)
    write(long, 3, 0, MiB)
    assert not qemu_img.compare(short, long, "qcow2", "qcow2")
    assert not qemu_img.compare(long, short, "qcow2", "qcow2")
    assert qemu_img.compare(short, short, "qcow2", "qcow2")


def test_measure_counts_what_the_chain_reads(tmp_path: Path) -> None:
    qemu_img = QemuImg()
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img.create(base, 64 * MiB)
    write(base, 1, 0, 16 * MiB)
    qemu_img.create(top, 64 * MiB, backing="base.qcow2")
    write(top, 2, 32 * MiB, MiB)
    # Standalone, the top would hold the base's 16 MiB and its own 1 MiB.
    assert 17 * MiB <= qemu_img.measure(top) < 64 * MiB
    assert qemu_img.measure(top) > qemu_img.measure(base)


def test_an_unsafe_rebase_only_renames_the_backing_file(tmp_path: Path) -> None:
    qemu_img = QemuImg()
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img.create(base, 16 * MiB)
    write(base, 1, 0, MiB)
    qemu_img.create(top, 16 * MiB, backing="base.qcow2")
    qemu_img.rebase(top, "", unsafe=True)
    assert "backing-filename" not in qemu_img.info(top)
    assert qemu_img.map(top) == []  # nothing was copied
