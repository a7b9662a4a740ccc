"""NbdWriter and NbdClient against a real qemu-nbd (and nbdkit where qemu-nbd cannot
play the part). Async code runs under asyncio.run inside plain tests."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sendense.nbd.client import NbdClient
from sendense.nbd.errors import (
    NbdConnectError,
    NbdConnectionLost,
    NbdError,
    NbdServerError,
    NbdUriError,
)
from sendense.nbd.qemu_img import QemuImg
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd
from sendense.nbd.writer import NbdWriter
from tests.rig.net import free_port
from tests.rig.procs import stop

MiB = 1 << 20
SIZE = 64 * MiB
T = TypeVar("T")


class Abort(Exception):
    pass


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Every scenario under a deadline: a hang is a failure, never a stuck run."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def block(seed: int, size: int = MiB) -> bytes:
    """Deterministic, never all zero."""
    return (b"\x01" + random.Random(seed).randbytes(4095)) * (size // 4096)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.qcow2"
    QemuImg().create(path, SIZE)
    return path


@contextmanager
def served(image: Path, port: int | None = None, read_only: bool = False) -> Iterator[QemuNbd]:
    spec = ExportSpec(image, port or free_port(), "disk0", read_only=read_only)
    server = QemuNbd(spec, log_path=image.with_suffix(f".{spec.port}.log"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def uri_of(server: QemuNbd) -> str:
    return f"nbd://127.0.0.1:{server.spec.port}/disk0"


def expected_raw(path: Path, writes: list[tuple[int, bytes]]) -> Path:
    with path.open("wb") as handle:
        handle.truncate(SIZE)
        for offset, data in writes:
            handle.seek(offset)
            handle.write(data)
    return path


def qemu_map(image: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", str(image)], capture_output=True, text=True, check=True
    ).stdout
    extents: list[dict[str, Any]] = json.loads(out)
    return extents


def extents_over(image: Path, start: int, length: int) -> list[dict[str, Any]]:
    return [
        e
        for e in qemu_map(image)
        if e["start"] < start + length and start < e["start"] + e["length"]
    ]


def test_data_and_zero_chunks_land_identically(image: Path, tmp_path: Path) -> None:
    data_a, data_b = block(1, 8 * MiB), block(2, 3 * MiB)
    mixed = block(3) + bytes(2 * MiB) + block(4)  # split into data, zero, zero, data
    writes = [
        (0, data_a),
        (16 * MiB, mixed),
        (32 * MiB, data_b),
        (40 * MiB, bytes(8 * MiB)),  # a hole never written before
        (4 * MiB, bytes(4 * MiB)),  # zeroes over data written earlier
    ]
    with served(image) as server:

        async def scenario() -> NbdWriter:
            async with NbdWriter(uri_of(server), max_in_flight=4, request_size=MiB) as writer:
                assert writer.size == SIZE
                for offset, data in writes:  # the last one overwrites data still in flight
                    await writer.write(offset, data)
                await writer.zero(60 * MiB, 4 * MiB)
                await writer.flush()
            return writer

        writer = run(scenario())
    expected = expected_raw(tmp_path / "expected.raw", writes)
    assert QemuImg().compare(expected, image, "raw", "qcow2")
    assert writer.stats.data_bytes == 8 * MiB + 2 * MiB + 3 * MiB
    assert writer.stats.zero_bytes == 2 * MiB + 8 * MiB + 4 * MiB + 4 * MiB
    # Zero chunks reached the server as WRITE_ZEROES: present, zero, no data.
    for start, length in [(17 * MiB, 2 * MiB), (40 * MiB, 8 * MiB), (60 * MiB, 4 * MiB)]:
        extents = extents_over(image, start, length)
        assert extents
        assert all(e["present"] and e["zero"] and not e["data"] for e in extents), extents
    assert all(not e["data"] for e in extents_over(image, 4 * MiB, 4 * MiB))


def test_a_later_write_over_a_range_in_flight_wins(image: Path, tmp_path: Path) -> None:
    """NBD lets a server reorder requests in flight; the writer must not."""
    writes: list[tuple[int, bytes]] = []
    for i in range(8):
        base = i * 8 * MiB
        writes += [(base, block(i, 4 * MiB)), (base, bytes(4 * MiB))]  # data, then zeroes
        writes += [(base + 4 * MiB, bytes(4 * MiB)), (base + 4 * MiB, block(i + 8, 4 * MiB))]
    with served(image) as server:

        async def scenario() -> None:
            async with NbdWriter(uri_of(server), max_in_flight=8, request_size=4 * MiB) as w:
                for offset, data in writes:
                    await w.write(offset, data)
                await w.flush()

        run(scenario())
    assert QemuImg().compare(expected_raw(tmp_path / "expected.raw", writes), image, "raw", "qcow2")


def test_several_connections_share_the_requests_and_each_flushes(
    image: Path, tmp_path: Path
) -> None:
    """Requests spread over the connections, a later write over a range in flight
    on another connection still wins, every connection is flushed, and at most
    max_in_flight requests are in flight across them."""
    writes: list[tuple[int, bytes]] = []
    for i in range(8):
        base = i * 8 * MiB
        writes += [(base, block(i, 4 * MiB)), (base, bytes(4 * MiB))]  # data, then zeroes
        writes += [(base + 4 * MiB, bytes(4 * MiB)), (base + 4 * MiB, block(i + 8, 4 * MiB))]
        writes += [(base + MiB, block(i + 16))]  # over the zeroes of this range
    with served(image) as server:

        async def scenario() -> tuple[NbdWriter, int, set[int]]:
            most = 0
            used: set[int] = set()
            async with NbdWriter(
                uri_of(server), max_in_flight=8, request_size=MiB, connections=4
            ) as w:
                assert w.stats.connections == 4
                for offset, data in writes:
                    await w.write(offset, data)
                    most = max(most, w.in_flight)
                    used |= {op.conn for op in w._ops}
                await w.flush()
            return w, most, used

        writer, most, used = run(scenario())
    assert QemuImg().compare(expected_raw(tmp_path / "expected.raw", writes), image, "raw", "qcow2")
    assert used == {0, 1, 2, 3}
    assert most <= 8
    assert writer.stats.data_bytes == 8 * (4 + 4 + 1) * MiB
    # 72 data requests of 1 MiB, the zero runs, and a FLUSH per connection.
    assert writer.stats.requests >= 72 + 1 + 4


def test_further_connections_open_only_over_a_path_as_far_as_asked(
    image: Path, tmp_path: Path
) -> None:
    """A round trip on the first connection decides: shorter than `spread_from_rtt`
    (a near hub), the writer stays on one; as long or longer, it opens them all."""
    writes = [(i * MiB, block(i)) for i in range(8)]
    with served(image) as server:

        async def scenario(spread: float) -> NbdWriter:
            async with NbdWriter(
                uri_of(server), request_size=MiB, connections=4, spread_from_rtt=spread
            ) as w:
                for offset, data in writes:
                    await w.write(offset, data)
                await w.flush()
            return w

        near = run(scenario(60.0))  # no loopback round trip takes a minute
        far = run(scenario(1e-9))
    assert (near.stats.connections, far.stats.connections) == (1, 4)
    assert 0 < (near.stats.round_trip_s or 0) < 60.0
    assert (far.stats.round_trip_s or 0) >= 1e-9
    assert QemuImg().compare(expected_raw(tmp_path / "expected.raw", writes), image, "raw", "qcow2")


def test_connections_beyond_what_the_server_takes_are_left_out(image: Path, tmp_path: Path) -> None:
    """qemu-nbd --shared=2: the two further connections get no handshake; the
    writer carries on over the two it has."""
    writes = [(i * MiB, block(i)) for i in range(16)]
    spec = ExportSpec(image, free_port(), "disk0", shared=2)
    with QemuNbd(spec, log_path=tmp_path / "qemu-nbd.log") as server:

        async def scenario() -> NbdWriter:
            async with NbdWriter(
                uri_of(server), request_size=MiB, connections=4, connect_timeout=1.0
            ) as w:
                for offset, data in writes:
                    await w.write(offset, data)
                await w.flush()
            return w

        writer = run(scenario(), timeout=20)
    assert writer.stats.connections == 2
    assert QemuImg().compare(expected_raw(tmp_path / "expected.raw", writes), image, "raw", "qcow2")


def test_concurrent_producers_lose_no_zero_run(image: Path, tmp_path: Path) -> None:
    """The node's engine calls write() from several readers at once. Each producer
    here owns 8 MiB, alternates zero and data chunks and pauses as a read would,
    so zero runs keep replacing one another while submitters wait for a slot."""
    chunks = [(i * MiB, bytes(MiB) if i % 2 == 0 else block(i)) for i in range(64)]
    pauses = random.Random(7)
    with served(image) as server:

        async def scenario() -> NbdWriter:
            async with NbdWriter(uri_of(server), max_in_flight=1, request_size=MiB) as writer:

                async def producer(k: int) -> None:
                    for offset, data in chunks[k * 8 : k * 8 + 8]:
                        await writer.write(offset, data)
                        await asyncio.sleep(pauses.random() * 0.002)

                await asyncio.gather(*(producer(k) for k in range(8)))
                await writer.flush()
            return writer

        writer = run(scenario())
    assert writer.stats.zero_bytes == 32 * MiB
    assert writer.stats.data_bytes == 32 * MiB
    assert QemuImg().compare(expected_raw(tmp_path / "expected.raw", chunks), image, "raw", "qcow2")
    for offset, data in chunks:  # every zero chunk reached the server, none was dropped
        if not any(data):
            assert all(e["present"] and e["zero"] for e in extents_over(image, offset, MiB))


def test_skip_zeroes_sends_nothing_for_zero_chunks(image: Path, tmp_path: Path) -> None:
    writes = [(0, block(5, 2 * MiB) + bytes(6 * MiB) + block(6))]
    with served(image) as server:

        async def scenario() -> NbdWriter:
            async with NbdWriter(uri_of(server), request_size=MiB, skip_zeroes=True) as writer:
                await writer.write(*writes[0])
                await writer.zero(32 * MiB, 8 * MiB)
                await writer.flush()
            return writer

        writer = run(scenario())
    assert QemuImg().compare(expected_raw(tmp_path / "expected.raw", writes), image, "raw", "qcow2")
    assert writer.stats.data_bytes == 3 * MiB
    assert writer.stats.zero_bytes == 14 * MiB
    assert writer.stats.requests == 3 + 1  # three data chunks and the flush
    assert all(not e["present"] for e in extents_over(image, 2 * MiB, 6 * MiB))


def test_memory_stays_within_max_in_flight(image: Path) -> None:
    with pytest.raises(ValueError, match="buffer"):
        NbdWriter("nbd://127.0.0.1:1/x", max_in_flight=32, request_size=4 * MiB)
    with served(image) as server:

        async def scenario() -> tuple[int, int, int]:
            most_buffered = most_in_flight = 0
            async with NbdWriter(uri_of(server), max_in_flight=4, request_size=MiB) as writer:
                tracemalloc.start()
                for i in range(24):
                    # 3 MiB per call: the writer must split and keep only its chunks.
                    await writer.write(i * 3 * MiB % (SIZE - 3 * MiB), os.urandom(3 * MiB))
                    most_buffered = max(most_buffered, writer.buffered_bytes)
                    most_in_flight = max(most_in_flight, writer.in_flight)
                await writer.flush()
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            return most_buffered, most_in_flight, peak

        most_buffered, most_in_flight, peak = run(scenario())
    assert 2 <= most_in_flight <= 4  # pipelined, and never beyond the bound
    assert most_buffered <= 4 * MiB
    # 72 MiB went through; what was alive at once: 4 chunks + the caller's 3 MiB.
    assert peak < 10 * MiB, peak


def test_a_killed_server_fails_writes_and_flush_promptly(image: Path) -> None:
    with served(image) as server:

        async def scenario() -> None:
            async with NbdWriter(uri_of(server), request_size=MiB, retries=0) as writer:
                for i in range(4):
                    await writer.write(i * MiB, block(i))
                await writer.flush()
                os.kill(server.pid, signal.SIGKILL)

                async def keep_writing() -> None:
                    for i in range(4, 64):
                        await writer.write(i * MiB, block(i))
                    await writer.flush()

                with pytest.raises(NbdConnectionLost, match=uri_of(server)):
                    await keep_writing()
                with pytest.raises(NbdConnectionLost):
                    await writer.flush()
                with pytest.raises(NbdConnectionLost):
                    await writer.write(0, block(9))
                raise Abort  # the failed path: __aexit__ must close, not raise

        with pytest.raises(Abort):
            run(scenario())


def test_retries_run_out_with_an_error_naming_the_uri(image: Path) -> None:
    with served(image) as server:

        async def scenario() -> NbdWriter:
            writer = NbdWriter(uri_of(server), request_size=MiB, retries=3, backoff=0.02)

            async def write_across_a_stop() -> None:
                async with writer:
                    await writer.write(0, block(1))
                    await writer.drain()
                    server.stop()
                    await writer.write(MiB, block(2))
                    await writer.flush()

            with pytest.raises(NbdConnectionLost, match=uri_of(server)):
                await write_across_a_stop()
            return writer

        writer = run(scenario())
    assert writer.stats.retries == 3


@pytest.mark.parametrize("connections", [1, 3])
def test_reconnects_and_resends_when_the_server_restarts(
    image: Path, tmp_path: Path, connections: int
) -> None:
    writes = [(i * MiB, block(i)) for i in range(48)]
    port = free_port()
    servers: list[QemuNbd] = []
    stopped = threading.Event()

    def restart() -> None:
        servers[0].stop()
        stopped.set()
        time.sleep(0.2)  # the writer meets a refused port a few times first
        second = QemuNbd(ExportSpec(image, port, "disk0"), log_path=tmp_path / "second.log")
        servers.append(second)
        second.start()

    async def scenario() -> NbdWriter:
        async with NbdWriter(
            uri_of(servers[0]), request_size=MiB, retries=8, backoff=0.05, connections=connections
        ) as w:
            for offset, data in writes[:16]:
                await w.write(offset, data)  # left in flight when the server stops
            restarting = asyncio.create_task(asyncio.to_thread(restart))
            while not stopped.is_set():
                await asyncio.sleep(0.01)
            for offset, data in writes[16:]:
                await w.write(offset, data)
            await w.flush()
            await restarting
        return w

    try:
        with served(image, port) as first:
            servers.append(first)
            writer = run(scenario(), timeout=20)
    finally:
        for server in servers:
            server.stop()
    assert writer.stats.retries >= 1
    assert writer.stats.resent >= 1
    assert writer.stats.data_bytes == 48 * MiB
    assert QemuImg().compare(expected_raw(tmp_path / "expected.raw", writes), image, "raw", "qcow2")


def test_bad_uri_closed_port_and_unknown_export_are_clear(image: Path) -> None:
    with pytest.raises(NbdUriError):
        NbdWriter("http://127.0.0.1:10809/disk0")
    with pytest.raises(NbdUriError):
        NbdWriter("nbd://127.0.0.1:99999/disk0")
    closed = free_port()
    with pytest.raises(NbdConnectError, match=f"nbd://127.0.0.1:{closed}/d"):
        run(NbdWriter(f"nbd://127.0.0.1:{closed}/d").__aenter__())
    with served(image) as server:
        other = f"nbd://127.0.0.1:{server.spec.port}/nope"
        with pytest.raises(NbdConnectError, match="nope"):
            run(NbdWriter(other).__aenter__())


def test_an_error_reply_is_raised_with_its_errno_and_not_retried(image: Path) -> None:
    with served(image) as server:

        async def scenario() -> NbdWriter:
            writer = NbdWriter(uri_of(server), request_size=MiB)

            async def write_past_the_end() -> None:
                async with writer:
                    await writer.write(SIZE - MiB, block(1) + block(2))  # 1 MiB too far
                    await writer.flush()

            with pytest.raises(NbdServerError) as caught:
                await write_past_the_end()
            # qemu-nbd 7.2 answers EINVAL; the NBD spec suggests ENOSPC for writes.
            assert caught.value.errno_name in {"EINVAL", "ENOSPC"}
            assert uri_of(server) in caught.value.message
            return writer

        writer = run(scenario())
    assert writer.stats.retries == 0


def test_read_only_export_is_refused(image: Path) -> None:
    with served(image, read_only=True) as server, pytest.raises(NbdError, match="read-only"):
        run(NbdWriter(uri_of(server)).__aenter__())


def test_client_pipelines_and_fails_everything_once_the_connection_dies(image: Path) -> None:
    with served(image) as server:

        async def scenario() -> None:
            async with await NbdClient.connect(uri_of(server), timeout=5) as client:
                assert client.info.size == SIZE
                assert client.info.can_write_zeroes
                assert client.info.can_flush
                blocks = [block(i) for i in range(16)]
                await asyncio.gather(*(client.write(i * MiB, b) for i, b in enumerate(blocks)))
                await client.flush()
                reads = await asyncio.gather(*(client.read(i * MiB, MiB) for i in range(16)))
                assert reads == blocks
                # Many small replies arrive together: parsed from one buffer.
                small = await asyncio.gather(*(client.read(i * 4096, 4096) for i in range(256)))
                assert b"".join(small) == blocks[0]
                # A cancelled READ's data is still consumed: the stream stays in step.
                abandoned = asyncio.ensure_future(client.read(0, 4 * MiB))
                await asyncio.sleep(0)
                abandoned.cancel()
                assert await client.read(5 * MiB, MiB) == blocks[5]
                pending = [asyncio.ensure_future(client.read(i * MiB, MiB)) for i in range(64)]
                await asyncio.sleep(0)  # let them reach the wire
                os.kill(server.pid, signal.SIGKILL)
                results = await asyncio.gather(*pending, return_exceptions=True)
                lost = [r for r in results if isinstance(r, NbdConnectionLost)]
                assert lost, "the kill came too late to catch any request in flight"
                assert all(isinstance(r, bytes | bytearray | NbdConnectionLost) for r in results)
                assert not client.alive
                with pytest.raises(NbdConnectionLost):
                    await client.write(0, blocks[0])

        run(scenario())


def test_zeroes_go_as_data_when_the_server_cannot_write_zeroes() -> None:
    port = free_port()
    nbdkit = subprocess.Popen(
        ["nbdkit", "-f", "-p", str(port), "-i", "127.0.0.1", "--filter=nozero", "memory", "16M"]
    )
    first = block(1, 4 * MiB)
    try:
        deadline = time.monotonic() + 10
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.02)

        async def scenario() -> tuple[NbdWriter, bytes | bytearray]:
            uri = f"nbd://127.0.0.1:{port}/"
            async with NbdWriter(uri, request_size=MiB) as writer:
                await writer.write(0, first)
                await writer.drain()
                await writer.write(MiB, bytes(2 * MiB))
                await writer.flush()
            async with await NbdClient.connect(uri) as client:
                assert not client.info.can_write_zeroes
                return writer, await client.read(0, 4 * MiB)

        writer, back = run(scenario())
    finally:
        stop(nbdkit)
    assert back == first[:MiB] + bytes(2 * MiB) + first[3 * MiB :]
    assert writer.stats.data_bytes == 6 * MiB
    assert writer.stats.zero_bytes == 0


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
