"""A WAN between two loopback ends, for a kernel without `netem`: a TCP proxy
that delays each direction, optionally limits its rate, and bounds what it holds.

    python -m tests.rig.wan_proxy --target-port 8022 --rtt-ms 20 [--listen-port 0]
        [--rate-mbps 100] [--window-mib 8] [--stats FILE]

Each connection accepted on 127.0.0.1:LISTEN is joined to a new connection to
127.0.0.1:TARGET (loopback only: anything else is refused). Each direction is a
link of its own: every chunk read (at most 256 KiB) is written to the other side
rtt/2 after it was read, in order, so that a round trip costs `rtt`. With a rate
the link also serialises: a chunk leaves after the ones before it, len/rate
later (a link of that many bytes/s; one chunk of burst at most). The window is
a TCP sender's: bytes read from one side and not yet acknowledged, an ack coming
back the other rtt/2 after the chunk was delivered (and a chunk not yet taken by
the kernel counts until it is). At most `window` bytes are held per direction
per connection: when full the link stops reading from its side (backpressure),
so one connection carries at most window/rtt whatever its peers' buffers: the
proxy stands for a path of that round trip whose TCP window is `window`.

It runs as its own process (no GIL shared with a bench), prints `listening PORT`
once it listens, writes counts to --stats after each connection and at exit, and
stops on SIGTERM. `tests.rig.wan.WanProxy` starts it and stops it by PID in every
outcome. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

READ = 256 * 1024
LOCAL = "127.0.0.1"
MiB = 1 << 20


class Link:
    """One direction of one connection: delays, paces and bounds what it carries."""

    def __init__(self, delay: float, rate: float | None, window: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.delay, self.rate, self.window = delay, rate, window
        self.src: asyncio.Transport | None = None  # read from, paused when full
        self.dst: asyncio.Transport | None = None  # written to, once connected
        self.waiting: deque[tuple[float, bytes | bytearray]] = deque()  # (due, data)
        self.unacked: deque[tuple[float, int]] = deque()  # (ack due, bytes)
        self.queued = self.unacked_bytes = self.carried = self.peak = 0
        self.link_free = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.paused = self.eof = self.done = False
        self.finished: Callable[[], None] = lambda: None  # called once done

    def held(self) -> int:
        buffered = self.dst.get_write_buffer_size() if self.dst is not None else 0
        return self.queued + self.unacked_bytes + buffered

    def room(self) -> int:
        return max(0, min(READ, self.window - self.held()))

    def feed(self, data: bytes | bytearray) -> None:
        if self.done:  # the destination went away: nowhere to deliver
            return
        now = self.loop.time()
        due = now
        if self.rate:
            self.link_free = max(now, self.link_free) + len(data) / self.rate
            due = self.link_free
        due += self.delay
        self.carried += len(data)
        if due <= now and not self.waiting and self.dst is not None:
            self.dst.write(data)
        else:
            self.waiting.append((due, data))
            self.queued += len(data)
        self.peak = max(self.peak, self.held())
        self.tick()

    def end(self) -> None:
        """The source sent EOF or went away: deliver what is held, then EOF."""
        self.eof = True
        self.tick()

    def tick(self) -> None:
        now = self.loop.time()
        while self.dst is not None and self.waiting and self.waiting[0][0] <= now:
            due, data = self.waiting.popleft()
            self.queued -= len(data)
            self.dst.write(data)
            if self.delay:
                self.unacked.append((due + self.delay, len(data)))
                self.unacked_bytes += len(data)
        while self.unacked and self.unacked[0][0] <= now:
            self.unacked_bytes -= self.unacked.popleft()[1]
        if self.eof and not self.waiting and self.dst is not None and not self.done:
            self.done = True
            if self.dst.can_write_eof() and not self.dst.is_closing():
                self.dst.write_eof()
            self.finished()
        self.check()
        self.arm()

    def check(self) -> None:
        """Stop reading when the window is full, go on once it is not."""
        if self.src is None or self.src.is_closing():
            return
        full = self.held() >= self.window
        if full and not self.paused:
            self.src.pause_reading()
        elif self.paused and not full:
            self.src.resume_reading()
        self.paused = full

    def arm(self) -> None:
        dues = [q[0][0] for q in (self.waiting, self.unacked) if q]
        if self.timer is not None:
            if dues and self.timer.when() == min(dues):
                return
            self.timer.cancel()
            self.timer = None
        if dues:
            self.timer = self.loop.call_at(min(dues), self.tick)

    def drop(self) -> None:
        """The destination is gone: nothing more to deliver."""
        self.waiting.clear()
        self.unacked.clear()
        self.queued = self.unacked_bytes = 0
        self.eof = self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.finished()


class Side(asyncio.BufferedProtocol):
    """One socket of a connection: reads into `out`, is written by `into`."""

    def __init__(self, out: Link, into: Link) -> None:
        self.out, self.into = out, into
        self.buffer = bytearray(READ)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=min(MiB, self.into.window // 4))
        self.out.src = transport
        self.into.dst = transport
        self.into.tick()

    def get_buffer(self, sizehint: int) -> memoryview:
        # Never more than the window's room (at least a byte: pausing is check()'s).
        self.buffer = bytearray(max(1, self.out.room()))
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        data = self.buffer if nbytes == len(self.buffer) else self.buffer[:nbytes]
        self.out.feed(data)

    def resume_writing(self) -> None:
        self.into.check()

    def eof_received(self) -> bool:
        self.out.end()
        return True  # the other direction goes on

    def connection_lost(self, exc: Exception | None) -> None:
        self.into.drop()
        self.out.end()


class Connection:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.up = Link(proxy.delay, proxy.rate, proxy.window)  # client -> target
        self.down = Link(proxy.delay, proxy.rate, proxy.window)
        self.client = Side(self.up, self.down)
        self.target = Side(self.down, self.up)
        self.up.finished = self.down.finished = self.maybe_close
        self.closed = False

    def maybe_close(self) -> None:
        if self.closed or not (self.up.done and self.down.done):
            return
        self.closed = True
        for side in (self.client, self.target):
            if side.transport is not None:
                side.transport.close()
        self.proxy.finished(self)


class Proxy:
    def __init__(self, args: argparse.Namespace) -> None:
        self.target = args.target_port
        self.delay = args.rtt_ms / 2000
        self.rate = args.rate_mbps * 1e6 if args.rate_mbps else None
        self.window = int(args.window_mib * MiB)
        self.stats_path: Path | None = args.stats
        self.open: set[Connection] = set()
        self.stats: dict[str, Any] = {
            "rtt_ms": args.rtt_ms,
            "rate_Bps": self.rate,
            "window": self.window,
            "connections": 0,
            "up_bytes": 0,
            "down_bytes": 0,
            "peak_held": 0,
        }

    def accepted(self) -> Side:
        conn = Connection(self)
        self.open.add(conn)
        self.stats["connections"] += 1
        asyncio.get_running_loop().create_task(self.dial(conn))
        return conn.client

    async def dial(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: conn.target, LOCAL, self.target)
        except OSError:
            conn.up.drop()
            conn.down.drop()
            conn.maybe_close()

    def finished(self, conn: Connection) -> None:
        self.open.discard(conn)
        self.count(conn)
        self.write_stats()

    def count(self, conn: Connection) -> None:
        self.stats["up_bytes"] += conn.up.carried
        self.stats["down_bytes"] += conn.down.carried
        self.stats["peak_held"] = max(self.stats["peak_held"], conn.up.peak, conn.down.peak)

    def write_stats(self) -> None:
        if self.stats_path is not None:
            tmp = self.stats_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.stats) + "\n")
            tmp.replace(self.stats_path)

    async def serve(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        loop.add_signal_handler(signal.SIGINT, stopping.set)
        server = await loop.create_server(self.accepted, LOCAL, port)
        print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
        await stopping.wait()
        server.close()
        for conn in list(self.open):
            self.count(conn)
            for side in (conn.client, conn.target):
                if side.transport is not None:
                    side.transport.abort()
        self.write_stats()


def local(host: str) -> str:
    """127.0.0.1 and nothing else: the proxy never listens on or dials a network."""
    if host != LOCAL:
        raise argparse.ArgumentTypeError(f"{host}: the WAN proxy is for {LOCAL} only")
    return host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-host", type=local, default=LOCAL)
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--target-host", type=local, default=LOCAL)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("--rate-mbps", type=float, default=0.0, help="MB/s per direction")
    parser.add_argument("--window-mib", type=float, default=8.0)
    parser.add_argument("--stats", type=Path, default=None)
    args = parser.parse_args()
    asyncio.run(Proxy(args).serve(args.listen_port))


if __name__ == "__main__":
    main()
