"""The NBD port pool under concurrency (threads and processes), on both databases."""

from __future__ import annotations

import multiprocessing
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from sendense.common.errors import PoolExhausted
from sendense.hub.db.database import Database
from sendense.hub.repository.ports import PortAllocator
from tests.rig.net import free_port_range


def _allocator(url: str, first: int, last: int) -> PortAllocator:
    return PortAllocator(Database(url), first, last)


def test_fifty_concurrent_allocations_get_fifty_ports(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    first, last = free_port_range(101)
    allocator = PortAllocator(db, first, last)
    with ThreadPoolExecutor(max_workers=50) as pool:
        ports = list(pool.map(lambda i: allocator.allocate(f"t{i}", disk_key=i), range(50)))
    assert len(set(ports)) == 50
    assert all(first <= p <= last for p in ports)
    assert allocator.status().used == 50
    db.dispose()


def _allocate_many(url: str, first: int, last: int, count: int, queue: object) -> None:
    allocator = _allocator(url, first, last)
    got = [allocator.allocate(f"proc-{i}") for i in range(count)]
    queue.put(got)  # type: ignore[attr-defined]
    allocator.db.dispose()


def test_allocations_from_several_processes_never_collide(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    db.dispose()
    first, last = free_port_range(101)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_allocate_many, args=(database_url, first, last, 10, queue))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    ports = [p for chunk in results for p in chunk]
    assert len(ports) == 40
    assert len(set(ports)) == 40


def test_full_pool_is_a_clear_error_and_release_frees(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    first, last = free_port_range(101)
    allocator = PortAllocator(db, first, last)
    ports = [allocator.allocate("fill") for _ in range(101)]
    assert sorted(ports) == list(range(first, last + 1))
    with pytest.raises(PoolExhausted, match=f"{first}-{last}") as exhausted:
        allocator.allocate("one too many")
    assert (exhausted.value.http_status, exhausted.value.exit_code) == (503, 6)
    allocator.release(ports[7])
    assert allocator.allocate("again") == ports[7]
    db.dispose()


def test_a_port_another_program_listens_on_is_skipped(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.migrate()
    first, last = free_port_range(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first))
        squatter.listen()
        allocator = PortAllocator(db, first, last)
        assert allocator.allocate("x") == first + 1
    db.dispose()
