"""The node's memory budget, bandwidth limit and restore priority: the engine
into real qemu-nbd exports, more streams than the budget holds at once (they
wait, none fails, every image identical), data paced and zeroes free, and
backups that read a few chunks at a time while a restore copies, all of them
again once it ends, however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from sendense.common.contract import DiskProgress
from sendense.common.errors import SendenseError
from sendense.common.targets import NbdTarget
from sendense.nbd.qemu_img import QemuImg
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd
from sendense.node.engine import CopyTuning, DiskPlan, NodeLimits, copy_disk
from sendense.node.limits import Bandwidth, MemoryBudget, RestoreFirst
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


async def _take(
    budget: MemoryBudget, size: int, name: str, order: list[str], at_once: bool = False
) -> None:
    async with budget.hold(size, name, at_once=at_once):
        order.append(name)


def test_a_restore_takes_its_share_at_once_and_backups_wait_under_the_budget() -> None:
    """A restore never waits for a backup stream to end (backups slow down while
    a restore copies: it would wait for what it slows); the backups waiting go
    once the held bytes are under the budget again."""

    async def scenario() -> list[str]:
        budget = MemoryBudget(10)
        order: list[str] = []
        running = budget.hold(10, "running backup")
        await running.__aenter__()
        waiting = asyncio.create_task(_take(budget, 10, "waiting backup", order))
        await asyncio.sleep(0.01)
        restoring = budget.hold(6, "restore", at_once=True)
        await asyncio.wait_for(restoring.__aenter__(), 1)
        assert (budget.held, budget.peak, budget.waits) == (16, 16, 1)
        await running.__aexit__(None, None, None)
        await asyncio.sleep(0.01)
        assert order == []  # 6 held still: 10 more would exceed the budget
        await restoring.__aexit__(None, None, None)
        await asyncio.wait_for(waiting, 5)
        assert (budget.held, budget.grants) == (0, 3)
        return order

    assert asyncio.run(scenario()) == ["waiting backup"]


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


# -- restores first -----------------------------------------------------------


class InFlightReader(MemoryReader):
    """Counts the backup reads going at once, every stream together: the most
    while a restore copied and the most after."""

    def __init__(self, data: bytes, gate: RestoreFirst, seen: dict[str, int]) -> None:
        super().__init__(data)
        self.gate, self.seen = gate, seen

    async def read(self, offset: int, length: int) -> bytes:
        seen = self.seen
        seen["now"] += 1
        during = "restoring" if self.gate.restores else "after"
        seen[during] = max(seen[during], seen["now"])
        try:
            await asyncio.sleep(0.002)  # a datastore answers after a while
            return await super().read(offset, length)
        finally:
            seen["now"] -= 1
            seen["done"] += 1
            seen[f"done {during}"] += 1


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.001)


Restore = Callable[[dict[str, int]], Coroutine[Any, Any, None]]


def backups_beside(exports: list[QemuNbd], gate: RestoreFirst, restore: Restore) -> dict[str, int]:
    """Every export backed up (2 readers each: 12 reads at once unrestricted)
    while `restore` runs, given the reads' counts; each image then checked
    against its source."""
    limits = NodeLimits(MemoryBudget(1 << 30), Bandwidth(None), gate)
    rng = random.Random(21)
    sources = [rng.randbytes(SIZE) for _ in exports]
    keys = ["now", "restoring", "after", "done", "done restoring", "done after"]
    seen = dict.fromkeys(keys, 0)

    async def scenario() -> None:
        restoring = asyncio.create_task(restore(seen))  # its failure is its own
        async with asyncio.TaskGroup() as group:
            await until(lambda: gate.restores == 1, "the restore never started")
            for key, server in enumerate(exports):
                reader = InFlightReader(sources[key], gate, seen)
                group.create_task(copy_disk(plan(server, key), reader, TUNING, limits))
            with contextlib.suppress(SendenseError, asyncio.CancelledError):
                await restoring

    asyncio.run(asyncio.wait_for(scenario(), 120))
    assert (gate.restores, gate.reads, gate.waiting) == (0, 0, 0)
    assert seen["done"] == STREAMS * SIZE // TUNING.chunk
    for key, server in enumerate(exports):
        server.stop()  # the image is locked while it is served
        raw = server.spec.image.with_suffix(".source")
        raw.write_bytes(sources[key])
        assert QemuImg().compare(raw, server.spec.image, "raw", "qcow2"), f"disk {key} differs"
    return seen


async def yielded_to(gate: RestoreFirst, seen: dict[str, int]) -> None:
    """Inside a restore: the backups go on a few reads at a time (8 of 48 done)
    until most of their readers queue."""
    await until(lambda: seen["done restoring"] >= 8, "the backups starved")
    await until(lambda: gate.waiting >= 3, "no backup read waited")


def test_backups_read_two_chunks_at_once_while_a_restore_copies(
    exports: list[QemuNbd],
) -> None:
    gate = RestoreFirst(2)

    async def restore(seen: dict[str, int]) -> None:
        with gate.restoring("restore job=r1"):
            await yielded_to(gate, seen)

    seen = backups_beside(exports, gate, restore)
    assert seen["restoring"] == 2
    assert seen["done restoring"] >= 8
    assert seen["done after"] > 0
    assert seen["after"] >= 3  # every waiting read went at once
    assert gate.yields >= 3


@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_a_restore_that_fails_or_is_cancelled_lets_the_backups_go(
    exports: list[QemuNbd], end: str
) -> None:
    gate = RestoreFirst(1)

    async def restore(seen: dict[str, int]) -> None:
        with gate.restoring("restore job=r2"):
            await yielded_to(gate, seen)
            if end == "failed":
                raise SendenseError("the datastore went away")
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(1)

    seen = backups_beside(exports, gate, restore)
    assert seen["restoring"] == 1
    assert seen["after"] >= 3


def test_backups_keep_to_their_rate_only_while_a_restore_copies() -> None:
    """10 MB/s while restoring: 5 reads of 1 MB wait for their slots (0.1 s
    apart); before and after the restore they take none."""

    async def scenario() -> RestoreFirst:
        gate = RestoreFirst(4, backup_mb_s=10)
        for _ in range(5):
            async with gate.backup_read(1_000_000) as place:
                assert not place.waited
        assert gate.paced_s == 0
        with gate.restoring("restore"):
            for _ in range(5):
                async with gate.backup_read(1_000_000):
                    pass
        paced = gate.paced_s
        async with gate.backup_read(1_000_000) as place:
            assert not place.waited
        assert gate.paced_s == paced
        return gate

    gate = asyncio.run(asyncio.wait_for(scenario(), 10))
    # The first read's slot starts at once; each next one, read after the last
    # one's wait, waits the 0.1 s of a 1 MB slot.
    assert gate.paced_s == pytest.approx(4 * 0.1, abs=0.05)
    assert gate.reads == 0


def test_the_gate_open_costs_no_wait_and_waiters_go_in_order() -> None:
    async def scenario() -> list[str]:
        gate = RestoreFirst(1)
        assert await gate.acquire() is False  # no restore: straight through
        assert await gate.acquire() is False
        assert gate.reads == 2
        order: list[str] = []

        async def read(name: str) -> None:
            async with gate.backup_read() as place:
                assert place.waited
                order.append(name)
                await asyncio.sleep(0.01)

        with gate.restoring("restore"):
            # Two reads went before the restore: they finish; until then none starts.
            tasks = {n: asyncio.create_task(read(n)) for n in ("a", "cancelled", "b", "c")}
            await asyncio.sleep(0.01)
            assert gate.waiting == 4
            tasks["cancelled"].cancel()
            gate.release()
            await asyncio.sleep(0.01)
            assert order == []  # one place, still taken
            gate.release()
            await until(lambda: order == ["a"], "a never read")
            await until(lambda: order == ["a", "b"], "b never read")
            assert gate.reads == 1
        # The restore ended: c goes at once, and so does a new read.
        await until(lambda: order == ["a", "b", "c"], "c never read")
        assert await gate.acquire() is False
        gate.release()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        assert (gate.reads, gate.waiting, gate.restored) == (0, 0, 1)
        return order

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="at least one read"):
        RestoreFirst(0)
