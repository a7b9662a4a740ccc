"""The node's memory budget and bandwidth limit: the engine into real qemu-nbd
exports, more streams than the budget holds at once (they wait, none fails,
every image identical), data paced and zeroes free."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendense.common.contract import DiskProgress
from sendense.common.targets import NbdTarget
from sendense.nbd.qemu_img import QemuImg
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd
from sendense.node.engine import CopyTuning, DiskPlan, NodeLimits, copy_disk
from sendense.node.limits import Bandwidth, MemoryBudget
from tests.rig.net import free_port
from tests.test_time_split import MemoryReader

MiB = 1 << 20
SIZE = 8 * MiB
STREAMS = 6
TUNING = CopyTuning(chunk=MiB, readers=2, in_flight=2)  # 4 MiB a stream


class CountingReader(MemoryReader):
    """Counts the streams reading at once: a stream counts from its first read
    until its copy has returned (inside the span it holds its budget)."""

    def __init__(self, data: bytes, streams: set[int], most: list[int], key: int) -> None:
        super().__init__(data)
        self.streams, self.most, self.key = streams, most, key

    async def read(self, offset: int, length: int) -> bytes:
        self.streams.add(self.key)
        self.most[0] = max(self.most[0], len(self.streams))
        await asyncio.sleep(0.002)  # a datastore answers after a while
        return await super().read(offset, length)


@pytest.fixture
def exports(tmp_path: Path) -> Iterator[list[QemuNbd]]:
    servers = []
    try:
        for i in range(STREAMS):
            image = tmp_path / f"disk{i}.qcow2"
            QemuImg().create(image, SIZE)
            server = QemuNbd(
                ExportSpec(image, free_port(), f"disk{i}"), log_path=tmp_path / f"nbd{i}.log"
            )
            server.start()
            servers.append(server)
        yield servers
    finally:
        for server in servers:
            server.stop()


def plan(server: QemuNbd, key: int) -> DiskPlan:
    target = NbdTarget(key, "127.0.0.1", server.spec.port, server.spec.name)
    progress = DiskProgress(disk_key=key, backup_type="full")
    return DiskPlan(target, SIZE, [(0, SIZE)], progress)


def test_streams_beyond_the_budget_wait_and_all_complete(
    exports: list[QemuNbd], tmp_path: Path
) -> None:
    budget = MemoryBudget(2 * TUNING.stream_bytes)  # two streams at a time
    limits = NodeLimits(budget, Bandwidth(None))
    rng = random.Random(18)
    sources = [rng.randbytes(SIZE) for _ in exports]
    reading: set[int] = set()
    most = [0]

    async def stream(key: int) -> None:
        reader = CountingReader(sources[key], reading, most, key)
        await copy_disk(plan(exports[key], key), reader, TUNING, limits)
        reading.discard(key)

    async def scenario() -> None:
        async with asyncio.TaskGroup() as group:
            for key in range(STREAMS):
                group.create_task(stream(key))

    asyncio.run(asyncio.wait_for(scenario(), 120))
    assert most[0] == 2
    assert budget.waits == STREAMS - 2
    assert budget.held == 0
    assert budget.peak == 2 * TUNING.stream_bytes
    for key, server in enumerate(exports):
        server.stop()  # the image is locked while it is served
        raw = tmp_path / f"source{key}.raw"
        raw.write_bytes(sources[key])
        assert QemuImg().compare(raw, server.spec.image, "raw", "qcow2"), f"disk {key} differs"


def test_a_stream_cancelled_while_waiting_gives_its_place_up() -> None:
    async def scenario() -> list[str]:
        budget = MemoryBudget(10)
        order: list[str] = []
        first = budget.hold(10, "first")
        await first.__aenter__()
        waiting = asyncio.create_task(_take(budget, 10, "cancelled", order))
        behind = asyncio.create_task(_take(budget, 10, "behind", order))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await first.__aexit__(None, None, None)
        await asyncio.wait_for(behind, 5)
        assert budget.held == 0
        return order

    assert asyncio.run(scenario()) == ["behind"]


async def _take(budget: MemoryBudget, size: int, name: str, order: list[str]) -> None:
    async with budget.hold(size, name):
        order.append(name)


def test_a_stream_larger_than_the_budget_runs_alone() -> None:
    budget = MemoryBudget(8)
    assert budget.share(100) == 8


def test_data_is_paced_and_zeroes_are_free(exports: list[QemuNbd]) -> None:
    """Two streams under one 20 MB/s limit: together they cannot send faster; a
    disk that is half zeroes pays for its data only."""
    rate = 20e6
    bandwidth = Bandwidth(rate / 1e6)
    paced: list[int] = []
    take = bandwidth.take

    async def counted(size: int) -> None:
        paced.append(size)
        await take(size)

    bandwidth.take = counted  # type: ignore[method-assign]
    limits = NodeLimits(MemoryBudget(1 << 30), bandwidth)
    rng = random.Random(20)
    half = [rng.randbytes(SIZE // 2) + bytes(SIZE // 2) for _ in range(2)]

    async def scenario() -> float:
        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for key in range(2):
                group.create_task(
                    copy_disk(plan(exports[key], key), MemoryReader(half[key]), TUNING, limits)
                )
        return time.monotonic() - started

    elapsed = asyncio.run(asyncio.wait_for(scenario(), 60))
    data = 2 * SIZE // 2
    assert sum(paced) == data
    # The first request goes at once; every other waits its turn.
    assert elapsed >= (data - TUNING.chunk) / rate
