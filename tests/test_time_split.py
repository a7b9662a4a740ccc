"""Progress phases and where a copy's time went. The node's engine into a real
qemu-nbd, with one side throttled well past the other (20 ms per MiB against
none), names that side; a whole site's backup shows its phases and records its
split on the finished job."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sendense.common.contract import TERMINAL_STATES, DiskProgress
from sendense.common.progress import EVERY_S, Meter
from sendense.common.targets import NbdTarget
from sendense.common.time_split import JobTimeSplit, TimeSplit, judge
from sendense.nbd.qemu_img import QemuImg
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd
from sendense.node.engine import CopyTuning, DiskPlan, copy_disk
from tests.rig.net import free_port
from tests.rig.node_tasks import unique
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, create_vm, fill, flat_file

MiB = 1 << 20
SIZE = 32 * MiB
THROTTLE_S_PER_MIB = 0.02
TUNING = CopyTuning(chunk=MiB, readers=4, in_flight=8)


class MemoryReader:
    """A source disk held in memory: reads cost nothing."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    async def close(self) -> None:
        pass


class ThrottledReader(MemoryReader):
    """A slow datastore: every read waits THROTTLE_S_PER_MIB per MiB first."""

    async def read(self, offset: int, length: int) -> bytes:
        await asyncio.sleep(THROTTLE_S_PER_MIB * length / MiB)
        return await super().read(offset, length)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s_per_mib: float
) -> None:
    try:
        while data := await reader.read(256 << 10):
            if s_per_mib:
                await asyncio.sleep(s_per_mib * len(data) / MiB)
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def throttled_proxy(port: int) -> AsyncIterator[int]:
    """A slow hub: a TCP proxy in front of qemu-nbd that holds what the node sends
    THROTTLE_S_PER_MIB per MiB before passing it on. Yields its port."""
    pipes: set[asyncio.Task[None]] = set()

    async def serve(down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        for task in (
            loop.create_task(_pipe(down_r, up_w, THROTTLE_S_PER_MIB)),
            loop.create_task(_pipe(up_r, down_w, 0.0)),
        ):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.wait_closed()


@pytest.fixture
def source(tmp_path: Path) -> tuple[bytes, Path]:
    data = random.Random(14).randbytes(SIZE)
    raw = tmp_path / "source.raw"
    raw.write_bytes(data)
    return data, raw


@pytest.fixture
def served(tmp_path: Path) -> Iterator[QemuNbd]:
    image = tmp_path / "disk.qcow2"
    QemuImg().create(image, SIZE)
    server = QemuNbd(ExportSpec(image, free_port(), "disk0"), log_path=tmp_path / "nbd.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def copy(reader: MemoryReader, server: QemuNbd, slow_target: bool) -> DiskProgress:
    """One full copy of the disk into the export, through the slow hub or not."""
    progress = DiskProgress(disk_key=2000, backup_type="full")
    target = NbdTarget(2000, "127.0.0.1", server.spec.port, "disk0")

    async def scenario() -> None:
        plan = DiskPlan(target, SIZE, [(0, SIZE)], progress)
        if slow_target:
            async with throttled_proxy(server.spec.port) as port:
                plan.uri = f"nbd://127.0.0.1:{port}/disk0"
                await copy_disk(plan, reader, TUNING)
        else:
            await copy_disk(plan, reader, TUNING)

    asyncio.run(asyncio.wait_for(scenario(), 60))
    return progress


def test_a_throttled_source_is_named_the_bottleneck(
    source: tuple[bytes, Path], served: QemuNbd
) -> None:
    data, raw = source
    progress = copy(ThrottledReader(data), served, slow_target=False)
    served.stop()
    assert QemuImg().compare(raw, served.spec.image, "raw", "qcow2")
    assert progress.phase == "finishing"
    assert progress.bytes_done == SIZE
    split = progress.time_split
    assert split.bottleneck == "source", split
    assert split.source_s > split.target_s


def test_a_throttled_target_is_named_the_bottleneck(
    source: tuple[bytes, Path], served: QemuNbd
) -> None:
    data, raw = source
    progress = copy(MemoryReader(data), served, slow_target=True)
    served.stop()
    assert QemuImg().compare(raw, served.spec.image, "raw", "qcow2")
    assert progress.phase == "finishing"
    split = progress.time_split
    assert split.bottleneck == "target", split
    assert split.target_s > split.source_s


def test_the_verdict_and_a_job_of_several_disks() -> None:
    assert judge(0.0, 0.0) is None
    assert judge(3.0, 1.0) == "source"
    assert judge(1.0, 3.0) == "target"
    assert judge(1.0, 1.2) == "balanced"
    # A big slow-source disk outweighs a small slow-target one: disk-seconds add up.
    job = JobTimeSplit.of(
        {
            2000: TimeSplit(source_s=10.0, target_s=1.0, bottleneck="source"),
            2001: TimeSplit(source_s=0.5, target_s=2.0, bottleneck="target"),
        }
    )
    assert (job.source_s, job.target_s, job.bottleneck) == (10.5, 3.0, "source")
    assert job.disks[2001].bottleneck == "target"


ORDER = ["snapshot", "planning", "copying", "flushing", "finishing"]


def test_a_backup_shows_its_phases_and_its_finished_job_where_the_time_went(
    tmp_path: Path, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    # One reader, one write in flight, 1 MiB at a time: slow enough to be seen copying.
    site = Site(tmp_path, chunk_mib="1", readers_per_disk="1", writes_in_flight="1")
    try:
        site.start()
        site.enroll_and_connect()
        site.add_vcenter(vcsim)
        assert site.api.post("/api/v1/repositories", json={"path": str(repo_dir)}).is_success
        name = unique("pace")
        vm = create_vm(si, name, [(2000, 128 * MiB, SCSI0)], cbt=True)
        fill(flat_file(vcsim, vm, 2000), [(o * MiB, bytes([o + 1]) * MiB) for o in range(128)])
        job_id = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
        seen: list[tuple[str, str | None, list[str]]] = []
        deadline = time.monotonic() + 120
        while not seen or seen[-1][0] not in TERMINAL_STATES:
            answer = site.api.get(f"/api/v1/jobs/{job_id}/progress")
            if answer.status_code == 200:
                status = answer.json()
                disks = [d["phase"] for d in status["disks"]]
                seen.append((status["state"], status["phase"], disks))
            assert time.monotonic() < deadline, seen[-3:]
            time.sleep(0.05)
        job = site.wait_job(job_id)
    finally:
        site.stop()
    assert job["state"] == "complete", job
    state, phase, disks = seen[-1]
    assert (state, phase, disks) == ("complete", "finishing", ["finishing"])
    phases = [p for _, p, _ in seen]
    assert "copying" in phases, seen
    assert all(p is not None for p in phases), seen
    steps = [ORDER.index(p) for p in phases if p is not None]
    assert steps == sorted(steps), f"a phase went back: {phases}"
    split = job["time_split"]
    assert split["source_s"] > 0, split
    assert split["target_s"] > 0, split
    assert split["bottleneck"] in ("source", "target", "balanced")
    assert set(split["disks"]) == {"2000"}
    assert split["disks"]["2000"]["source_s"] == split["source_s"]


def test_progress_figures_are_worked_out_at_most_every_50_ms_and_at_the_end() -> None:
    """Thousands of 64 KiB blocks a second: bytes_done counts each, rate and ETA
    are recomputed at most every EVERY_S, and exactly once the last byte is in."""

    @dataclass
    class Counters:
        bytes_total: int = 0
        bytes_done: int = 0
        seconds: float = 0.0
        eta_seconds: float | None = None
        rates: list[float] = field(default_factory=list)

        @property
        def rate_bytes_per_s(self) -> float:
            return self.rates[-1] if self.rates else 0.0

        @rate_bytes_per_s.setter
        def rate_bytes_per_s(self, value: float) -> None:
            self.rates.append(value)

    counters = Counters(bytes_total=1000 * 65536)
    meter = Meter(counters)
    started = time.monotonic()
    for _ in range(1000):
        meter.advance(65536)
    elapsed = time.monotonic() - started
    assert counters.bytes_done == counters.bytes_total
    assert len(counters.rates) <= 2 + elapsed / EVERY_S
    assert counters.eta_seconds == 0.0  # the last block's figures
    assert counters.rate_bytes_per_s == counters.bytes_total / counters.seconds
