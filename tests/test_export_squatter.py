"""A backup's data goes only to the qemu-nbd the hub started for it: a server that
took the export's socket path first is replaced and gets nothing; one that takes
it after the hub's server died makes the job fail; neither yields a `complete`
restore point of its data (issue 12, point 4)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from sendense.common.errors import SendenseError
from sendense.hub.backup.disks import DiskResult, DiskSpec
from sendense.hub.db.models import Job, JobState, NbdExport, RestorePoint
from sendense.hub.repository.logins import node_login
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


def squat(
    tmp_path: Path, port: int, name: str, squatters: list[QemuNbd], socket: Path | None = None
) -> QemuNbd:
    decoy = tmp_path / f"decoy-{port}.qcow2"
    QemuImg().create(decoy, 4 * MiB)
    server = QemuNbd(ExportSpec(decoy, port, name, cache="writeback", socket=socket))
    squatters.append(server)
    server.start()
    return server


async def write(uri: str, data: bytes) -> None:
    async with NbdWriter(uri, max_in_flight=2, request_size=MiB) as writer:
        await writer.write(0, data)
        await writer.flush()


def test_a_server_on_the_port_or_socket_first_never_gets_the_jobs_data(
    hub: Hub, repo_dir: Path, tmp_path: Path, squatters: list[QemuNbd]
) -> None:
    hub.repos.add(str(repo_dir))
    hub.ports.probe = False  # the race: the port was free when it was chosen
    port = hub.ports.first
    on_port = squat(tmp_path, port, "vm-disk0", squatters)  # TCP: no longer the export
    path = hub.exports.socket_path(node_login(None), port)
    path.parent.mkdir(parents=True)
    (tmp_path / "s").mkdir()
    on_socket = squat(tmp_path / "s", port, "vm-disk0", squatters, socket=path)
    prepared = hub.ledger.prepare("vm", [DiskSpec(2000, 4 * MiB)])
    disk = prepared.disks[0]
    asyncio.run(write(hub.exports.uri(disk.target.port, disk.target.export), b"\x07" * MiB))
    hub.ledger.finish(prepared.job_id, {2000: DiskResult(change_id="c", data_bytes=MiB)})
    with hub.db.session() as s:
        assert [j.state for j in s.scalars(select(Job))] == [JobState.COMPLETE]
    assert on_port.healthy()  # somebody else's process: never stopped by the hub
    assert on_socket.exited() is None
    for server in (on_port, on_socket):
        server.stop()
        assert QemuImg().map(server.spec.image) == []  # not a byte written


def test_a_squatter_after_the_hubs_qemu_nbd_died_never_completes_the_job(
    hub: Hub, repo_dir: Path, tmp_path: Path, squatters: list[QemuNbd]
) -> None:
    hub.repos.add(str(repo_dir))
    prepared = hub.ledger.prepare("vm", [DiskSpec(2000, 4 * MiB)])
    disk = prepared.disks[0]
    uri = hub.exports.uri(disk.target.port, disk.target.export)
    asyncio.run(write(uri, b"\x07" * MiB))
    with hub.db.session() as s:
        pid = s.scalars(select(NbdExport.pid)).one()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid], timeout=10) == []
    # Another program now answers on the export's socket, under the same name.
    path = hub.exports.socket_path(node_login(None), disk.target.port)
    squat(tmp_path, disk.target.port, disk.target.export, squatters, socket=path)
    asyncio.run(write(uri, b"\x08" * MiB))

    with pytest.raises(SendenseError, match="ended by itself"):
        hub.ledger.finish(prepared.job_id, {2000: DiskResult(change_id="c", data_bytes=MiB)})
    with hub.db.session() as s:
        job = s.get_one(Job, prepared.job_id)
        assert job.state == JobState.FAILED
        assert "cannot be trusted" in (job.error or "")
        assert s.scalars(select(RestorePoint)).all() == []
    assert list(repo_dir.rglob("*.qcow2")) == []
