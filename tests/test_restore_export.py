"""Disk export: a restore point's disk as raw, QCOW2 and VMDK files, and the HTTP
download, checked with `qemu-img compare` against the point and the data written.

The chains are made on the hub directly (its write exports, libnbd writes, the
checksums the node would record): vCenter plays no part in an export."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sendense.common.checksum import BlockHasher, block_digest, blocks
from sendense.common.errors import Conflict, InvalidInput, NotFound
from sendense.hub.api.queries import Queries
from sendense.hub.backup.disks import DiskResult, DiskSpec
from sendense.hub.restore.conversion import DiskConverter
from sendense.hub.service import Hub
from sendense.hub.verify.verifier import Verifier
from sendense.nbd.qemu_img import QemuImg
from tests.rig.cli import sendense
from tests.rig.hub import HubProcess
from tests.rig.nbd_data import expected_raw, pattern, write_through_nbd
from tests.rig.procs import pids_with

MiB = 1 << 20
SIZES = {2000: 48 * MiB, 2001: 8 * MiB}
BLOCK = MiB  # the checksum's block
Writes = dict[int, list[tuple[int, bytes]]]
FULL: Writes = {
    2000: [
        (0, pattern(1, 2 * MiB)),
        (20 * MiB, pattern(2, 3 * MiB)),
        (SIZES[2000] - MiB, pattern(3, MiB)),
    ],
    2001: [(MiB, pattern(4, MiB))],
}
INCREMENTAL: Writes = {
    2000: [(MiB, pattern(5, 64 * 1024)), (21 * MiB, bytes(MiB)), (30 * MiB, pattern(6, MiB))],
    2001: [(4 * MiB, pattern(7, 128 * 1024))],
}


@pytest.fixture
def hub(db_hub: Hub) -> Hub:
    """This module's tests run on SQLite and on PostgreSQL (issue 13: they ran on
    SQLite only)."""
    return db_hub


def fmt_of(path: Path) -> str:
    """The format of a file this test wrote, by its name."""
    return {".img": "raw", ".raw": "raw", ".qcow2": "qcow2", ".vmdk": "vmdk"}[path.suffix]


def same(first: Path, second: Path) -> bool:
    return QemuImg().compare(first, second, fmt_of(first), fmt_of(second))


@dataclass
class Chain:
    """A full and an incremental of a two-disk VM, and each point's expected disks."""

    points: list[str] = field(default_factory=list)
    expected: dict[str, dict[int, Path]] = field(default_factory=dict)

    @property
    def top(self) -> str:
        return self.points[-1]


def _checksum(writes: list[tuple[int, bytes]]) -> str:
    hasher = BlockHasher()
    zero = bytes(BLOCK)
    for start, data in writes:
        for offset, length in blocks([(start, len(data))], BLOCK):
            piece = data[offset - start : offset - start + length]
            hasher.add(offset, length, block_digest(piece, zero))
    return hasher.hexdigest()


def backup(hub: Hub, vm: str, writes: Writes) -> str:
    """One restore point, written through the hub's own exports."""
    prepared = hub.ledger.prepare(vm, [DiskSpec(k, size) for k, size in SIZES.items()])
    results = {}
    for disk in prepared.disks:
        write_through_nbd(hub.exports.uri(disk.target.port, disk.target.export), writes[disk.key])
        areas = [(offset, len(data)) for offset, data in writes[disk.key]]
        results[disk.key] = DiskResult(
            change_id=f"52 {len(areas)}",
            checksum=_checksum(writes[disk.key]),
            areas=areas,
            checksum_block=BLOCK,
        )
    return hub.ledger.finish(prepared.job_id, results)


def make_chain(hub: Hub, repo_dir: Path, work: Path, vm: str = "restore-vm") -> Chain:
    hub.repos.add(str(repo_dir))
    chain = Chain()
    done: Writes = {k: [] for k in SIZES}
    for step, writes in enumerate((FULL, INCREMENTAL)):
        point = backup(hub, vm, writes)
        chain.points.append(point)
        chain.expected[point] = {}
        for key, size in SIZES.items():
            done[key] += writes[key]
            chain.expected[point][key] = expected_raw(work / f"{step}-{key}.raw", size, done[key])
    return chain


def repository_state(repo_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(repo_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(repo_dir.rglob("*"))
        if p.is_file()
    }


def top_file(hub: Hub, repo_dir: Path, point: str, key: int) -> Path:
    disk = next(d for d in Queries(hub.db).restore_point(point).disks if d.disk_key == key)
    return repo_dir / disk.file_path


@pytest.fixture
def exporter(hub: Hub) -> DiskConverter:
    return DiskConverter(hub.db, hub.repos, hub.settings.scratch_dir)


def test_exports_read_as_the_point_and_the_download_is_the_raw_export(
    hub: Hub, api: TestClient, exporter: DiskConverter, repo_dir: Path, tmp_path: Path
) -> None:
    chain = make_chain(hub, repo_dir, tmp_path)
    before = repository_state(repo_dir)
    out = tmp_path / "exports"
    out.mkdir()
    qemu_img = QemuImg()
    # Point in time: the full exported from under its incremental reads as the full.
    full = exporter.export(chain.points[0], 2000, "raw", out / "full-2000.img")
    assert same(full.path, chain.expected[chain.points[0]][2000])
    assert not same(full.path, chain.expected[chain.top][2000])

    seen: list[float] = []
    raw = exporter.export(chain.top, 2000, "raw", out / "2000.img", progress=seen.append)
    assert seen == sorted(seen)
    assert seen[-1] == 100.0
    assert raw.path.stat().st_size == SIZES[2000]
    for fmt in ("qcow2", "vmdk"):
        result = exporter.export(chain.top, 2000, fmt, out / f"2000.{fmt}")
        info = qemu_img.info(result.path, fmt)
        assert info["format"] == fmt
        assert "backing-filename" not in info  # flattened: stands alone
        if fmt == "vmdk":
            assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    top = top_file(hub, repo_dir, chain.top, 2000)
    for name in ("2000.img", "2000.qcow2", "2000.vmdk"):
        assert same(out / name, top), name
        assert same(out / name, chain.expected[chain.top][2000]), name
    assert sorted(p.name for p in out.iterdir()) == [
        "2000.img",
        "2000.qcow2",
        "2000.vmdk",
        "full-2000.img",
    ]  # no partial file left

    response = api.get(f"/api/v1/restore-points/{chain.top}/disks/2000/download")
    assert response.status_code == 200, response.text
    assert response.headers["content-length"] == str(SIZES[2000])
    assert response.content == raw.path.read_bytes()
    small = api.get(f"/api/v1/restore-points/{chain.top}/disks/2001/download?format=raw")
    assert small.content == chain.expected[chain.top][2001].read_bytes()
    for fmt in ("qcow2", "vmdk"):
        got = api.get(f"/api/v1/restore-points/{chain.top}/disks/2000/download?format={fmt}")
        assert got.status_code == 200, got.text
        (tmp_path / f"download.{fmt}").write_bytes(got.content)
        assert same(tmp_path / f"download.{fmt}", top), fmt

    # Each download is a task of kind export, complete once every byte went.
    exports = api.get("/api/v1/tasks", params={"kind": "export"}).json()
    assert exports["total"] == 4
    assert {t["state"] for t in exports["items"]} == {"complete"}
    assert all(t["started_by"].startswith("token:") for t in exports["items"])
    # A client that goes before the end leaves a failed task and nothing behind.
    with api.stream("GET", f"/api/v1/restore-points/{chain.top}/disks/2000/download") as cut:
        assert cut.status_code == 200
        next(cut.iter_bytes())
    deadline = time.monotonic() + 30
    while True:
        newest = api.get("/api/v1/tasks", params={"kind": "export", "limit": 1}).json()
        if newest["total"] == 5 and newest["items"][0]["state"] != "running":
            break
        assert time.monotonic() < deadline, newest
        time.sleep(0.1)
    assert newest["items"][0]["state"] == "failed"
    assert newest["items"][0]["error_code"] == "download_incomplete"

    assert repository_state(repo_dir) == before
    assert list(hub.settings.scratch_dir.iterdir()) == []
    assert pids_with(str(hub.settings.scratch_dir)) == []


def test_bad_input_is_refused_and_changes_nothing(
    hub: Hub, api: TestClient, exporter: DiskConverter, repo_dir: Path, tmp_path: Path
) -> None:
    chain = make_chain(hub, repo_dir, tmp_path)
    unfinished = hub.ledger.prepare("restore-vm", [DiskSpec(k, s) for k, s in SIZES.items()])
    before = repository_state(repo_dir)
    url = "/api/v1/restore-points/{}/disks/{}/download"
    expectations = [
        (url.format("no-such-point", 2000), 404, "not_found", "no-such-point"),
        (url.format(chain.top, 2002), 404, "not_found", "2002"),
        (url.format(chain.top, 2000) + "?format=vhdx", 422, "invalid_input", "format"),
        (url.format(unfinished.restore_point_id, 2000), 409, "point_not_restorable", "incomplete"),
    ]
    for path, status, code, key in expectations:
        response = api.get(path)
        assert response.status_code == status, (path, response.text)
        assert response.json()["error"] == code, (path, response.text)
        assert key in response.json()["message"]

    out = tmp_path / "exports"
    out.mkdir()
    (out / "taken.img").write_bytes(b"keep me")
    with pytest.raises(Conflict, match="exists"):
        exporter.export(chain.top, 2000, "raw", out / "taken.img")
    assert (out / "taken.img").read_bytes() == b"keep me"
    with pytest.raises(InvalidInput, match="repository"):
        exporter.export(chain.top, 2000, "raw", repo_dir / "x.img")
    with pytest.raises(InvalidInput, match="missing"):
        exporter.export(chain.top, 2000, "raw", tmp_path / "missing" / "x.img")
    with pytest.raises(InvalidInput, match="format"):
        exporter.export(chain.top, 2000, "vhdx", out / "x.vhdx")
    with pytest.raises(NotFound):
        exporter.export(chain.top, 7, "raw", out / "x.img")
    forced = exporter.export(chain.top, 2001, "raw", out / "taken.img", force=True)
    assert QemuImg().compare(forced.path, chain.expected[chain.top][2001], "raw", "raw")
    assert sorted(p.name for p in out.iterdir()) == ["taken.img"]
    assert repository_state(repo_dir) == before

    # A point that failed verification is not exported.
    _flip_a_data_byte(top_file(hub, repo_dir, chain.points[0], 2000))
    verdicts = Verifier(hub.db, hub.repos, hub.settings.scratch_dir).verify([chain.top])
    assert not verdicts[0].valid
    before = repository_state(repo_dir)
    response = api.get(url.format(chain.top, 2000))
    assert response.status_code == 409
    assert response.json()["error"] == "point_not_restorable"
    assert "invalid" in response.json()["message"]
    assert repository_state(repo_dir) == before
    hub.ledger.fail(unfinished.job_id, "test: never meant to finish")


def _flip_a_data_byte(image: Path) -> None:
    mapped = subprocess.run(
        ["qemu-img", "map", "--output=json", str(image)], check=True, capture_output=True, text=True
    )
    extents = json.loads(mapped.stdout)
    extent = next(e for e in extents if e["data"] and "offset" in e)
    with image.open("r+b") as handle:
        handle.seek(extent["offset"] + 4097)
        old = handle.read(1)
        handle.seek(extent["offset"] + 4097)
        handle.write(bytes([old[0] ^ 0xFF]))


@pytest.fixture
def served_chain(
    hub: Hub, repo_dir: Path, tmp_path: Path
) -> Iterator[tuple[Chain, dict[str, str]]]:
    """A chain made in this process, then the hub as a real process on the same data."""
    chain = make_chain(hub, repo_dir, tmp_path)
    served = HubProcess(hub.settings.data_dir, hub.settings.database_url)
    try:
        served.start()
        env = {
            **os.environ,
            "COLUMNS": "200",
            **served.cli_env(served.initial_token()),
        }
        yield chain, env
    finally:
        served.stop()


def test_cli_export_downloads_and_refuses_in_one_line(
    served_chain: tuple[Chain, dict[str, str]], repo_dir: Path, tmp_path: Path
) -> None:
    chain, env = served_chain
    before = repository_state(repo_dir)
    out = tmp_path / "exports"
    out.mkdir()
    target = out / "disk.img"
    args = ["restore", "export", chain.top, "--disk", "2000", "--output", str(target)]
    done = sendense(*args, env=env)
    assert done.returncode == 0, done.stderr
    assert str(target) in done.stdout
    assert target.read_bytes() == chain.expected[chain.top][2000].read_bytes()
    assert target.stat().st_blocks * 512 < SIZES[2000]  # holes stay holes

    refused = [
        (args, 4, "exists"),
        ([*args[:-1], str(repo_dir / "x.img")], 2, "repository"),
        ([*args[:-1], str(out / "x.img"), "--format", "vhdx"], 2, "vhdx"),
        (
            ["restore", "export", "no-such-point", "--disk", "2000", "--output", str(out / "y")],
            3,
            "no-such-point",
        ),
        ([*args[:4], "2002", "--output", str(out / "z")], 3, "2002"),
    ]
    for argv, code, key in refused:
        result = sendense(*argv, env=env)
        assert result.returncode == code, (argv, result.stderr)
        assert result.stderr.startswith("error: "), result.stderr
        assert key in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["disk.img"]

    forced = sendense(*args, "--format", "qcow2", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert QemuImg().info(target)["format"] == "qcow2"
    assert QemuImg().compare(target, chain.expected[chain.top][2000], "qcow2", "raw")
    assert sorted(p.name for p in out.iterdir()) == ["disk.img"]
    assert repository_state(repo_dir) == before
