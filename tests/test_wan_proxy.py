"""The rig's WAN proxy (tests/rig/wan_proxy.py) as a process: it really delays
(a round trip measured through it costs at least the set RTT), carries bytes
unchanged both ways, holds to its rate and its window, and is gone afterwards.

Timings here are the proxy's promises (a delay at least as long as set, a rate
at most as high), never a performance target; the upper bounds are generous.
"""

from __future__ import annotations

import hashlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.rig.procs import pids_with, wait_gone
from tests.rig.wan import ROOT, WanProxy

MiB = 1 << 20


@contextmanager
def server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback listener whose first connection `handle` serves in a thread;
    its port. Sockets closed and the thread joined afterwards."""
    listener = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conns.append(conn)
        with conn:
            handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for conn in conns:
            conn.close()
        thread.join(timeout=30)


def echo(conn: socket.socket) -> None:
    while data := conn.recv(MiB):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def receive_all(conn: socket.socket) -> bytes:
    parts = []
    while data := conn.recv(MiB):
        parts.append(data)
    return b"".join(parts)


def round_trips(port: int, count: int = 15) -> list[float]:
    times = []
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            started = time.monotonic()
            conn.sendall(b"ping")
            got = b""
            while len(got) < 4:
                got += conn.recv(4 - len(got))
            times.append(time.monotonic() - started)
            assert got == b"ping"
    return times


def test_a_round_trip_through_the_proxy_costs_at_least_its_rtt(tmp_path: Path) -> None:
    with server(echo) as port, WanProxy(tmp_path, port, rtt_ms=40) as wan:
        delayed = round_trips(wan.port)
    with server(echo) as port, WanProxy(tmp_path, port, rtt_ms=0) as wan:
        plain = round_trips(wan.port)
    assert min(delayed) >= 0.040
    assert statistics.median(delayed) < 0.040 + 0.1
    assert statistics.median(plain) < 0.020  # no delay set: much less than 40 ms


def test_bytes_arrive_unchanged_both_ways(tmp_path: Path) -> None:
    payload = os.urandom(48 * MiB)

    def upload(conn: socket.socket) -> None:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)

    with (
        server(echo) as port,
        WanProxy(tmp_path, port, rtt_ms=10, window_mib=1) as wan,
        socket.create_connection(("127.0.0.1", wan.port)) as conn,
    ):
        sent = threading.Thread(target=upload, args=(conn,))
        sent.start()
        back = receive_all(conn)
        sent.join()
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
    stats = wan.stats()
    assert stats["up_bytes"] == stats["down_bytes"] == len(payload)


def sink(received: list[tuple[int, float]], wait: float = 0.0) -> Callable[[socket.socket], None]:
    """A receiver that starts reading `wait` seconds after the connection, and
    notes (bytes, time of its last byte)."""

    def handle(conn: socket.socket) -> None:
        time.sleep(wait)
        total = 0
        while data := conn.recv(MiB):
            total += len(data)
            received[:] = [(total, time.monotonic())]

    return handle


def send(port: int, size: int) -> float:
    """`size` bytes to `port`; when sending started."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        started = time.monotonic()
        conn.sendall(bytes(size))
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the other end's close
    return started


def test_the_rate_limit_is_an_upper_bound(tmp_path: Path) -> None:
    received: list[tuple[int, float]] = []
    size, rate = 12 * MiB, 20.0  # MB/s
    with server(sink(received)) as port, WanProxy(tmp_path, port, rate_mbps=rate) as wan:
        started = send(wan.port, size)
    total, last = received[0]
    assert total == size
    assert total / (last - started) <= rate * 1e6 * 1.05


def test_a_direction_holds_at_most_its_window(tmp_path: Path) -> None:
    """A receiver that reads nothing for a second: the proxy stops reading rather
    than buffering."""
    received: list[tuple[int, float]] = []
    size, window = 24 * MiB, 2 * MiB
    with (
        server(sink(received, wait=1.0)) as port,
        WanProxy(tmp_path, port, rtt_ms=50, window_mib=window / MiB) as wan,
    ):
        send(wan.port, size)
    assert received[0][0] == size
    assert window // 2 <= wan.stats()["peak_held"] <= window


def test_a_window_per_round_trip_at_most(tmp_path: Path) -> None:
    received: list[tuple[int, float]] = []
    size, window, rtt = 24 * MiB, 2 * MiB, 0.05
    with (
        server(sink(received)) as port,
        WanProxy(tmp_path, port, rtt_ms=rtt * 1000, window_mib=window / MiB) as wan,
    ):
        started = send(wan.port, size)
    total, last = received[0]
    assert total == size
    assert total / (last - started) <= window / rtt * 1.25


def fail_inside(tmp_path: Path, pids: list[int]) -> None:
    with WanProxy(tmp_path, 9, rtt_ms=5) as wan:
        pids.append(wan.pid)
        assert pids_with(str(tmp_path), name="python") == [wan.pid]
        raise RuntimeError("inside")


def test_the_process_is_gone_after_an_exception(tmp_path: Path) -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="inside"):
        fail_inside(tmp_path, pids)
    assert len(pids) == 1
    assert wait_gone(pids, timeout=0.5) == []
    assert pids_with(str(tmp_path), name="python") == []


@pytest.mark.parametrize("flag", ["--listen-host", "--target-host"])
def test_the_proxy_refuses_anything_but_loopback(flag: str) -> None:
    argv = [sys.executable, "-m", "tests.rig.wan_proxy", "--target-port", "9", flag, "0.0.0.0"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "127.0.0.1 only" in done.stderr
