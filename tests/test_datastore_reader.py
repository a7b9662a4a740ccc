"""HttpsDatastoreReader: several areas in one multi-range request against the
simulator's real /folder (Go's file server), and the fallback to one range per
request against fake servers (http.server, named as such: no real server here
lacks multi-range support)."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sendense.common.checksum import block_digest
from sendense.node.vmware.connection import VcenterError
from sendense.node.vmware.datastore_connections import DatastoreConnections
from sendense.node.vmware.readers import HttpsDatastoreReader
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, destroy_vm, fill, flat_file

BLOCK = 64 * 1024
SIZE = 4 * MiB
AREAS = [(0, 10), (BLOCK - 3, 7), (BLOCK + 4, 2 * BLOCK), (MiB, BLOCK), (SIZE - 5, 5)]
DATA = bytes(i * 7 % 251 for i in range(SIZE))


async def _read_many(reader: HttpsDatastoreReader, areas: list[tuple[int, int]]) -> list[bytes]:
    """The areas' bytes in order; each area must come exactly once."""
    found: dict[int, bytes] = {}
    async for index, data, _ in reader.read_many(areas):
        assert index not in found
        found[index] = data
    assert sorted(found) == list(range(len(areas)))
    return [found[i] for i in range(len(areas))]


def _read_all(reader: HttpsDatastoreReader, areas: list[tuple[int, int]]) -> list[bytes]:
    async def go() -> list[bytes]:
        try:
            return await _read_many(reader, areas)
        finally:
            await reader.close()

    return asyncio.run(go())


def test_read_many_from_the_simulator_is_one_request(vcsim: Vcsim, si: Any) -> None:
    vm = create_vm(si, f"reader-{uuid.uuid4().hex[:8]}", [(2000, SIZE, SCSI0)])
    try:
        fill(flat_file(vcsim, vm, 2000), [(0, DATA)])
        reader = HttpsDatastoreReader(
            "127.0.0.1",
            vcsim.port,
            ssl._create_unverified_context(),
            si._stub.cookie,
            "DC0",
            vm.config.hardware.device[-1].backing.fileName,
        )
        assert _read_all(reader, AREAS) == [DATA[o : o + n] for o, n in AREAS]
        assert reader._multi_range  # the server answered multipart/byteranges
    finally:
        destroy_vm(si, vm)


def test_readers_share_the_connections_a_job_opened_ahead(vcsim: Vcsim, si: Any) -> None:
    """A backup opens its datastore connections while the snapshot is taken: the
    readers of both disks read over those (no handshake of their own), hash in
    their threads, and leave them open for the job, which closes them all."""
    vm = create_vm(si, f"reader-{uuid.uuid4().hex[:8]}", [(2000, SIZE, SCSI0)])
    try:
        fill(flat_file(vcsim, vm, 2000), [(0, DATA)])
        conns = DatastoreConnections("127.0.0.1", vcsim.port, ssl._create_unverified_context())
        conns.warm(2)
        deadline = time.monotonic() + 10
        while sum(c.sock is not None for c in conns._all) < 2 or any(
            t.name.startswith("datastore-connect") for t in threading.enumerate()
        ):  # opened, and the threads that opened them gone
            assert time.monotonic() < deadline, "the connections were not opened ahead"
            time.sleep(0.01)
        path = vm.config.hardware.device[-1].backing.fileName

        async def both() -> list[list[tuple[int, bytes, bytes | None]]]:
            readers = [
                HttpsDatastoreReader(
                    "127.0.0.1",
                    vcsim.port,
                    ssl._create_unverified_context(),
                    si._stub.cookie,
                    "DC0",
                    path,
                    connections=1,
                    shared=conns,
                )
                for _ in range(2)
            ]
            try:
                return [[a async for a in r.read_many(AREAS, block_digest)] for r in readers]
            finally:
                for r in readers:
                    await r.close()

        for arrivals in asyncio.run(both()):
            assert sorted(i for i, _, _ in arrivals) == list(range(len(AREAS)))
            for index, data, digest in arrivals:
                offset, length = AREAS[index]
                assert data == DATA[offset : offset + length]
                assert digest == block_digest(data)
        assert len(conns._all) == 2  # no connection beyond those opened ahead
        assert all(c.sock is not None for c in conns._all)  # the readers left them open
        conns.close()
        assert all(c.sock is None for c in conns._all)
    finally:
        destroy_vm(si, vm)


def test_a_connection_not_opened_ahead_leaves_the_error_to_the_read() -> None:
    """Nothing listens: opening ahead fails quietly; the read says why."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    conns = DatastoreConnections("127.0.0.1", port, ssl._create_unverified_context())
    conns.warm(1)
    reader = HttpsDatastoreReader(
        "127.0.0.1",
        port,
        ssl._create_unverified_context(),
        "c=1",
        "DC0",
        "[LocalDS_0] vm/vm.vmdk",
        connections=1,
        shared=conns,
    )
    with pytest.raises(VcenterError, match="reading 10 bytes at 0 failed"):
        asyncio.run(reader.read(0, 10))
    asyncio.run(reader.close())
    conns.close()


class _FakeFolder(BaseHTTPRequestHandler):
    """A fake /folder serving DATA. With `merge`, ranges less than 80 bytes
    apart are merged into one (as Apache does), one range left is a plain 206,
    several a multipart/byteranges answer. Without, a request for several
    ranges gets 200 and the whole file, as RFC 9110 allows a server that
    ignores Range."""

    merge = False
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        spec = self.headers.get("Range", "")
        self.requests.append(spec)
        bounds: list[tuple[int, int]] = []
        for a, b in re.findall(r"(\d+)-(\d+)", spec):
            if bounds and self.merge and int(a) - bounds[-1][1] <= 80:
                bounds[-1] = (bounds[-1][0], int(b))
            else:
                bounds.append((int(a), int(b)))
        if len(bounds) == 1:
            start, end = bounds[0]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{SIZE}")
            body = DATA[start : end + 1]
        elif self.merge:
            self.send_response(206)
            self.send_header("Content-Type", "multipart/byteranges; boundary=XyZ")
            body = b"".join(
                b"\r\n--XyZ\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Range: bytes {a}-{b}/{SIZE}\r\n\r\n".encode()
                + DATA[a : b + 1]
                for a, b in bounds
            )
            body += b"\r\n--XyZ--\r\n"
        else:
            self.send_response(200)
            body = DATA
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the reader drops a 200 without reading the disk
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("tls")
    cert, key = out / "cert.pem", out / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(params=[False, True], ids=["ignores-multi-range", "merges-ranges"])
def fake_folder(
    request: pytest.FixtureRequest, tls_files: tuple[Path, Path]
) -> Iterator[tuple[int, type[_FakeFolder]]]:
    handler = type("Handler", (_FakeFolder,), {"merge": request.param, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_read_many_falls_back_or_cuts_merged_ranges(
    fake_folder: tuple[int, type[_FakeFolder]],
) -> None:
    port, handler = fake_folder
    reader = HttpsDatastoreReader(
        "127.0.0.1", port, ssl._create_unverified_context(), "c=1", "DC0", "[ds] vm/vm.vmdk"
    )

    async def go() -> tuple[list[bytes], list[bytes]]:
        try:
            return await _read_many(reader, AREAS), await _read_many(reader, AREAS[1:3])
        finally:
            await reader.close()

    first, second = asyncio.run(go())
    assert first == [DATA[o : o + n] for o, n in AREAS]
    assert second == [DATA[o : o + n] for o, n in AREAS[1:3]]
    if handler.merge:
        assert len(handler.requests) == 2  # one request per read_many
        assert reader._multi_range
    else:
        # One refused multi-range request, then one request per area for good.
        assert len(handler.requests) == 1 + len(AREAS) + 2
        assert not reader._multi_range


class _IgnoresRange(BaseHTTPRequestHandler):
    """A fake /folder that ignores Range: every GET gets 200 and a whole 256 MiB
    disk, streamed; `sent` counts what left before the reader hung up."""

    sent: ClassVar[list[int]] = []
    size = 256 * MiB

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        chunk, sent = bytes(MiB), 0
        try:
            while sent < self.size:
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            self.close_connection = True
        finally:
            self.sent.append(sent)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_server_that_ignores_range_is_refused_without_reading_the_disk(
    tls_files: tuple[Path, Path],
) -> None:
    handler: type[_IgnoresRange] = type("Handler", (_IgnoresRange,), {"sent": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    reader = HttpsDatastoreReader(
        "127.0.0.1",
        server.server_address[1],
        ssl._create_unverified_context(),
        "c=1",
        "DC0",
        "[ds] vm/vm.vmdk",
    )

    async def go() -> None:
        try:
            await reader.read(0, 4096)
        finally:
            await reader.close()

    tracemalloc.start()
    try:
        with pytest.raises(VcenterError):
            asyncio.run(go())
        _, peak = tracemalloc.get_traced_memory()
        deadline = time.monotonic() + 30
        while not handler.sent and time.monotonic() < deadline:
            time.sleep(0.05)  # the server notices the hang-up at its next write
    finally:
        tracemalloc.stop()
        server.shutdown()
        server.server_close()
        thread.join()
    assert peak < 16 * MiB  # the 256 MiB body never landed in memory
    assert handler.sent
    assert max(handler.sent) < _IgnoresRange.size
