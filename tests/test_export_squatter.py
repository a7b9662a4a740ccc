"""A backup's data goes only to the qemu-nbd the hub started for it: a program that
takes the export's port first, or after the hub's server died, makes the job fail;
it never yields a `complete` restore point (issue 12, point 4)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from sendense.common.errors import SendenseError
from sendense.hub.backup.ledger import DiskResult, DiskSpec
from sendense.hub.db.models import Job, JobState, NbdExport, RestorePoint
from sendense.hub.service import Hub
from sendense.nbd.qemu_img import QemuImg
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd
from sendense.nbd.writer import NbdWriter
from tests.rig.procs import wait_gone

MiB = 1 << 20


@pytest.fixture
def squatters(tmp_path: Path) -> Iterator[list[QemuNbd]]:
    """Some other program's NBD servers, stopped by the test in every outcome."""
    started: list[QemuNbd] = []
    yield started
    for server in started:
        server.stop()


def squat(tmp_path: Path, port: int, name: str, squatters: list[QemuNbd]) -> QemuNbd:
    decoy = tmp_path / f"decoy-{port}.qcow2"
    QemuImg().create(decoy, 4 * MiB)
    server = QemuNbd(ExportSpec(decoy, port, name, cache="writeback"))
    squatters.append(server)
    server.start()
    return server


async def write(uri: str, data: bytes) -> None:
    async with NbdWriter(uri, max_in_flight=2, request_size=MiB) as writer:
        await writer.write(0, data)
        await writer.flush()


def test_a_port_taken_before_qemu_nbd_binds_it_fails_the_job(
    hub: Hub, repo_dir: Path, tmp_path: Path, squatters: list[QemuNbd]
) -> None:
    hub.repos.add(str(repo_dir))
    hub.ports.probe = False  # the race: the port was free when it was chosen
    squatter = squat(tmp_path, hub.ports.first, "vm-disk0", squatters)
    with pytest.raises(SendenseError):
        hub.ledger.prepare("vm", [DiskSpec(2000, 4 * MiB)])
    with hub.db.session() as s:
        assert [j.state for j in s.scalars(select(Job))] == [JobState.FAILED]
        assert s.scalars(select(RestorePoint)).all() == []
        assert s.scalars(select(NbdExport)).all() == []
    assert list(repo_dir.rglob("*.qcow2")) == []
    assert squatter.healthy()  # somebody else's process: never stopped by the hub


def test_a_squatter_after_the_hubs_qemu_nbd_died_never_completes_the_job(
    hub: Hub, repo_dir: Path, tmp_path: Path, squatters: list[QemuNbd]
) -> None:
    hub.repos.add(str(repo_dir))
    prepared = hub.ledger.prepare("vm", [DiskSpec(2000, 4 * MiB)])
    disk = prepared.disks[0]
    asyncio.run(write(disk.target.uri, b"\x07" * MiB))
    with hub.db.session() as s:
        pid = s.scalars(select(NbdExport.pid)).one()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid], timeout=10) == []
    # Another program now answers on the port, under the same export name.
    squat(tmp_path, disk.target.port, disk.target.export, squatters)
    asyncio.run(write(disk.target.uri, b"\x08" * MiB))

    with pytest.raises(SendenseError, match="ended by itself"):
        hub.ledger.finish(prepared.job_id, {2000: DiskResult(change_id="c", data_bytes=MiB)})
    with hub.db.session() as s:
        job = s.get_one(Job, prepared.job_id)
        assert job.state == JobState.FAILED
        assert "cannot be trusted" in (job.error or "")
        assert s.scalars(select(RestorePoint)).all() == []
    assert list(repo_dir.rglob("*.qcow2")) == []
