"""NbdWriter: the per-disk writer the node's copy engine feeds.

Requests are pipelined up to `max_in_flight`; `write()` returns once its data is in
flight, so a producer can read the next block while this one crosses the wire, and
the buffers held stay below max_in_flight * request_size. All-zero chunks go as
WRITE_ZEROES, never as data. A dropped connection is re-established with backoff
and the requests it had not acknowledged are sent again (writes are idempotent).

With `connections` > 1 the writer opens that many NBD connections to the export
and sends each request on the connection with the fewest in flight: over a path
where one connection carries a bounded window per round trip (an SSH channel, a
TCP window), k connections carry k windows. `max_in_flight` stays the writer's
total across its connections (the memory bound does not change); a write over a
range still in flight waits for it whichever connection carries it; `flush()`
flushes every connection (a FLUSH covers the writes its own connection
completed, unless the export advertises multi-conn). Each connection's first
connect is tried a few times within about 1.4 s (a server taking many logins at
once may refuse one: sshd's MaxStartups); the connections after the first are
left out if they cannot be opened, the others carrying on. With
`spread_from_rtt` the others are opened only over a far path: when a round trip
on the first connection (a one-sector read) takes at least that long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from sendense.nbd.client import Data, NbdClient
from sendense.nbd.errors import NbdConnectError, NbdConnectionLost, NbdError
from sendense.nbd.protocol import (
    CMD_FLUSH,
    CMD_WRITE,
    CMD_WRITE_ZEROES,
    ExportTraits,
    parse_uri,
)
from sendense.nbd.round_trips import RoundTrips, path_of

MAX_BUFFERED = 64 << 20  # per disk: max_in_flight * request_size may not exceed this
# One WRITE_ZEROES request at most: large enough to make a hole a handful of
# requests, well inside the 32-bit length field.
MAX_ZERO_REQUEST = 1 << 30
MAX_BACKOFF = 30.0
MAX_CONNECTIONS = 16
# Each connection's first connect: tries, and the pause before the second
# (doubling: 0.2 + 0.4 + 0.8 s).
FIRST_CONNECT_TRIES = 4
FIRST_CONNECT_PAUSE = 0.2

log = logging.getLogger(__name__)


@dataclass
class WriteStats:
    data_bytes: int = 0  # bytes sent as NBD_CMD_WRITE
    zero_bytes: int = 0  # bytes sent as WRITE_ZEROES (or skipped)
    requests: int = 0
    retries: int = 0  # reconnect attempts
    resent: int = 0  # requests sent again on a new connection
    connections: int = 0  # NBD connections opened at the start
    round_trip_s: float | None = None  # measured on the first, when it decided the others


@dataclass(eq=False)  # identity hash: ops live in a set
class _Op:
    cmd: int
    offset: int
    length: int
    data: bytes | memoryview | None = None
    reply: asyncio.Future[Data] | None = None
    task: asyncio.Task[None] | None = None
    conn: int = 0  # the index of the connection that carries it


class NbdWriter:
    def __init__(
        self,
        uri: str,
        *,
        max_in_flight: int = 8,
        request_size: int = 4 << 20,
        retries: int = 5,
        backoff: float = 0.5,
        skip_zeroes: bool = False,
        connect_timeout: float = 10.0,
        pace: Callable[[int], Awaitable[None]] | None = None,
        connections: int = 1,
        spread_from_rtt: float = 0.0,
        round_trips: RoundTrips | None = None,
        path: str | None = None,
    ) -> None:
        """`pace`, when given, is awaited with each data request's length before
        it is sent (a bandwidth limit); zeroes do not pass through it.
        `connections`: NBD connections to the export (at most `max_in_flight`
        are used: each needs a request to carry). `spread_from_rtt` (seconds):
        the connections after the first are opened only when a round trip on the
        first takes at least this long (0: always); a near path gains nothing
        from them and pays their processes' CPU. `round_trips`: the node's
        memory of its paths; the decision takes the least round trip of the
        path's last minutes, not this one alone (round_trips.py); `path` names
        the path there (default: round_trips.path_of the URI)."""
        parse_uri(uri)  # a bad URI fails here, before any connection attempt
        if max_in_flight < 1 or request_size < 1:
            raise ValueError("max_in_flight and request_size must be positive")
        if not 1 <= connections <= MAX_CONNECTIONS:
            raise ValueError(f"connections must be 1 to {MAX_CONNECTIONS}")
        if max_in_flight * request_size > MAX_BUFFERED:
            raise ValueError(
                f"max_in_flight * request_size = {max_in_flight * request_size} bytes "
                f"exceeds the per-disk buffer limit of {MAX_BUFFERED}"
            )
        self.uri = uri
        self.max_in_flight = max_in_flight
        self.request_size = request_size
        self.retries = retries
        self.backoff = backoff
        self.skip_zeroes = skip_zeroes
        self.connect_timeout = connect_timeout
        self.pace = pace
        self.connections = min(connections, max_in_flight)
        self.spread_from_rtt = spread_from_rtt
        self.round_trips = round_trips
        self.path = path or path_of(uri)
        self.size = 0
        self.stats = WriteStats()
        # One per connection; None while that one reconnects.
        self._clients: list[NbdClient | None] = []
        self._load: list[int] = []  # requests in flight per connection
        self._info = ExportTraits(0, 0)
        self._entered = False
        self._zero = memoryview(bytes(request_size))  # calloc'd: costs no real memory
        self._slots = asyncio.Semaphore(max_in_flight)
        self._ops: set[_Op] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnecting: list[asyncio.Lock] = []
        # Per connection: reconnect attempts since its last acknowledged request.
        self._failures: list[int] = []
        self._turn = 0  # where the search for the least busy connection starts
        self._error: BaseException | None = None
        self._zero_run: tuple[int, int] | None = None  # adjacent zero chunks, not yet sent

    @property
    def in_flight(self) -> int:
        return len(self._ops)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of data this writer holds for requests not yet acknowledged."""
        return sum(len(op.data) for op in self._ops if op.data is not None)

    async def __aenter__(self) -> NbdWriter:
        client = await self._first_connect()
        if client.info.read_only:
            await client.close()
            raise NbdError(f"{self.uri}: the export is read-only")
        self._info = client.info
        self.size = client.info.size
        self.request_size = min(self.request_size, client.info.max_payload)
        wanted = self.connections
        if wanted > 1 and self.spread_from_rtt > 0:
            try:
                measured = await self._round_trip(client)
            except (NbdError, TimeoutError) as exc:  # unknown: open them all
                log.info("NBD %s: no round trip measured (%s)", self.uri, exc)
            else:
                if self.round_trips is not None:
                    measured = self.round_trips.least(self.path, measured)
                self.stats.round_trip_s = measured
                if measured < self.spread_from_rtt:
                    wanted = 1
        tries = [self._first_connect() for _ in range(wanted - 1)]
        more = await asyncio.gather(*tries, return_exceptions=True)
        clients = [client, *(c for c in more if isinstance(c, NbdClient))]
        unusable = [c for c in clients[1:] if c.info.size != self.size or c.info.read_only]
        failed = next((c for c in more if not isinstance(c, (NbdClient, NbdConnectError))), None)
        if failed is not None or unusable:
            for c in clients if failed is not None else unusable:
                await c.close()
            if isinstance(failed, BaseException):
                raise failed
            clients = [c for c in clients if c not in unusable]
        if len(clients) < wanted:
            log.warning(
                "NBD %s: %d of %d connections opened; writing over those",
                self.uri,
                len(clients),
                wanted,
            )
        self._clients = list(clients)
        self._load = [0] * len(clients)
        self._failures = [0] * len(clients)
        self._reconnecting = [asyncio.Lock() for _ in clients]
        self.stats.connections = len(clients)
        self._entered = True
        return self

    async def _round_trip(self, client: NbdClient) -> float:
        """The fastest of three one-sector reads: the path's round trip."""
        loop = asyncio.get_running_loop()
        best = float("inf")
        for _ in range(3):
            started = loop.time()
            await asyncio.wait_for(client.read(0, 512), self.connect_timeout)
            best = min(best, loop.time() - started)
        return best

    async def _first_connect(self) -> NbdClient:
        """A connection to the export, after a few brief tries. A refusal (a
        server taking many logins at once: sshd's MaxStartups) is tried again; a
        handshake that does not come is not: a server at its client limit
        (qemu-nbd --shared) leaves a connection waiting."""
        pause = FIRST_CONNECT_PAUSE
        loop = asyncio.get_running_loop()
        for attempt in range(1, FIRST_CONNECT_TRIES + 1):
            started = loop.time()
            try:
                return await NbdClient.connect(self.uri, timeout=self.connect_timeout)
            except NbdConnectError as exc:
                if attempt == FIRST_CONNECT_TRIES or loop.time() - started >= self.connect_timeout:
                    raise
                log.info("NBD %s: connect %d failed: %s", self.uri, attempt, exc)
            await asyncio.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                await self.drain()
        finally:
            for op in self._ops:  # a task cancelled before it ran never awaits its reply
                if op.reply is not None:
                    op.reply.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for client in self._clients:
                if client is not None:
                    await client.close()

    async def write(self, offset: int, data: bytes) -> None:
        """Queue `data` at `offset`; returns when it is in flight (raises an earlier error)."""
        self._check()
        size, pos = len(data), 0
        while pos < size:
            n = min(self.request_size, size - pos)
            # startswith with bounds compares in place at memcmp speed: no slice
            # copy, unlike `==` on a memoryview (DESIGN.md).
            if data.startswith(self._zero[:n], pos, pos + n):
                await self._zeroes(offset + pos, n)
            else:
                await self._emit_zero_run()
                # A slice copy lets the caller's (possibly larger) buffer go, so
                # the memory bound holds whatever the caller hands in.
                chunk = data if n == size else data[pos : pos + n]
                if self.pace is not None:
                    await self.pace(n)
                await self._submit(_Op(CMD_WRITE, offset + pos, n, chunk))
            pos += n

    async def zero(self, offset: int, length: int) -> None:
        self._check()
        if length > 0:
            await self._zeroes(offset, length)

    async def flush(self) -> None:
        """Wait for everything in flight, then NBD_CMD_FLUSH on every connection."""
        await self.drain()
        if self._info.can_flush:
            for index in range(len(self._clients)):
                await self._submit(_Op(CMD_FLUSH, 0, 0, conn=index), pick=False)
            await self.drain()

    async def drain(self) -> None:
        """Wait for every request in flight; raise the first error."""
        self._check()
        await self._emit_zero_run()
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        self._check()

    def _check(self) -> None:
        if not self._entered:
            raise RuntimeError("NbdWriter is not connected: use `async with`")
        if self._error is not None:
            raise self._error

    async def _zeroes(self, offset: int, length: int) -> None:
        """Coalesce adjacent zero ranges into a few large WRITE_ZEROES requests.

        The run is read and replaced with no await in between: several producers
        may call write() at once, and none may overwrite another's pending run.
        """
        if self.skip_zeroes:
            self.stats.zero_bytes += length
            return
        run = self._zero_run
        if run is not None and run[0] + run[1] == offset and run[1] + length <= MAX_ZERO_REQUEST:
            self._zero_run = (run[0], run[1] + length)
            return
        self._zero_run = (offset, length)
        if run is not None:
            await self._send_zeroes(*run)

    async def _emit_zero_run(self) -> None:
        run, self._zero_run = self._zero_run, None
        if run is not None:
            await self._send_zeroes(*run)

    async def _send_zeroes(self, offset: int, length: int) -> None:
        can_zero = self._info.can_write_zeroes
        step = MAX_ZERO_REQUEST if can_zero else self.request_size
        for pos in range(offset, offset + length, step):
            n = min(step, offset + length - pos)
            if can_zero:
                await self._submit(_Op(CMD_WRITE_ZEROES, pos, n))
            else:  # last resort: the shared zero buffer, sent as data
                await self._submit(_Op(CMD_WRITE, pos, n, self._zero[:n]))

    async def _submit(self, op: _Op, pick: bool = True) -> None:
        await self._slots.acquire()
        try:
            await self._after_overlaps(op)
        except BaseException:
            self._slots.release()
            raise
        if self._error is not None:
            self._slots.release()
            raise self._error
        if pick:
            op.conn = self._pick()
        self._ops.add(op)
        self._load[op.conn] += 1
        self.stats.requests += 1
        # On the wire now, while the caller reads its next block; the task only
        # waits for the reply (and resends after a reconnect).
        task = op.task = asyncio.get_running_loop().create_task(self._run(op, *self._send(op)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_overlaps(self, op: _Op) -> None:
        """NBD servers may reorder requests in flight; a write over a range still in
        flight waits for it, so the later write wins, as in a file."""
        end = op.offset + op.length
        while clash := {
            o.task
            for o in self._ops
            if o.task is not None
            and not o.task.done()
            and o.offset < end
            and op.offset < o.offset + o.length
        }:
            await asyncio.wait(clash)

    def _pick(self) -> int:
        """The connection with the fewest requests in flight (the first of them
        from a turn that moves on: equal ones take requests in turn)."""
        count = len(self._load)
        if count == 1:
            return 0
        start = self._turn
        best = min(range(start, start + count), key=lambda i: self._load[i % count]) % count
        self._turn = (best + 1) % count
        return best

    def _send(self, op: _Op) -> tuple[NbdClient | None, asyncio.Future[Data] | None]:
        client = self._clients[op.conn]
        if client is None or not client.alive:
            return client, None
        op.reply = client.submit(op.cmd, op.offset, op.length, op.data)
        return client, op.reply

    async def _run(
        self, op: _Op, client: NbdClient | None, reply: asyncio.Future[Data] | None
    ) -> None:
        try:
            while True:
                try:
                    if reply is None:
                        raise NbdConnectionLost(f"{self.uri}: not connected")
                    await reply
                except NbdConnectionLost as exc:
                    await self._reconnect(op.conn, client, exc)
                    self.stats.resent += 1
                    client, reply = self._send(op)
                    continue
                self._failures[op.conn] = 0
                if op.cmd == CMD_WRITE:
                    self.stats.data_bytes += op.length
                elif op.cmd == CMD_WRITE_ZEROES:
                    self.stats.zero_bytes += op.length
                return
        except Exception as exc:  # kept for drain/write/flush to raise
            if self._error is None:
                self._error = exc
        finally:
            self._ops.discard(op)
            self._load[op.conn] -= 1
            self._slots.release()

    async def _reconnect(
        self, index: int, dead: NbdClient | None, cause: NbdConnectionLost
    ) -> None:
        """Replace a dead connection; one task does it, the others of that
        connection wait and resend."""
        async with self._reconnecting[index]:
            if self._error is not None:
                raise self._error
            if self._clients[index] is not dead:
                return  # another task already reconnected
            self._clients[index] = None
            if dead is not None:
                await dead.close()
            last: NbdError = cause
            while self._failures[index] < self.retries:
                await asyncio.sleep(min(self.backoff * 2 ** self._failures[index], MAX_BACKOFF))
                self._failures[index] += 1
                self.stats.retries += 1
                try:
                    client = await NbdClient.connect(self.uri, timeout=self.connect_timeout)
                except NbdConnectError as exc:
                    last = exc
                    continue
                if client.info.size != self.size:
                    await client.close()
                    raise NbdError(f"{self.uri}: export size changed on reconnect")
                self._clients[index] = client
                return
            raise NbdConnectionLost(
                f"{self.uri}: gave up after {self.retries} reconnect attempts: {last}"
            ) from cause
