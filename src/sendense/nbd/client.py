"""A small asyncio NBD client: fixed newstyle, NBD_OPT_GO, simple replies, pipelined.

Protocol: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md.
Many requests may be in flight, keyed by cookie; one read callback resolves their
futures. Once the connection is lost every pending and every later request fails
at once with NbdConnectionLost: a client that keeps queueing on a dead socket
hangs forever (DESIGN.md). No NBD_OPT_EXPORT_NAME fallback: qemu-nbd and nbdkit
both answer NBD_OPT_GO, and a server that does not is refused by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import socket
from collections import deque
from types import TracebackType

from sendense.nbd.errors import NbdConnectError, NbdConnectionLost, NbdError, NbdServerError
from sendense.nbd.protocol import (
    CMD_DISC,
    CMD_FLUSH,
    CMD_NAMES,
    CMD_READ,
    CMD_WRITE,
    CMD_WRITE_ZEROES,
    ESHUTDOWN,
    NBD_ERRNO,
    READ_BUFFER,
    REPLY,
    REQUEST,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    ExportTraits,
    handshake,
    open_socket,
    parse_uri,
    quickack,
)

# What a request's future gets: a READ's own receive buffer (never copied), else b"".
Data = bytes | bytearray


class NbdClient:
    """One connection in the transmission phase. Create with `await NbdClient.connect(uri)`.

    Callback-driven like a transport: `submit()` puts the request on the wire at
    once (as much as the socket takes, the rest when it is writable) and returns
    a future; one read callback parses replies from a buffer and resolves futures.
    No task, lock or per-request syscall beyond the send itself.
    """

    def __init__(self, sock: socket.socket, uri: str, info: ExportTraits) -> None:
        self.uri = uri
        self.info = info
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, tuple[asyncio.Future[Data], int, int, int]] = {}
        self._cookies = itertools.count(1)
        self._out: deque[memoryview] = deque()  # bytes not yet taken by the socket
        self._writing = False
        self._send_soon = False  # a send is queued on the loop
        self._buf = bytearray(READ_BUFFER)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self._payload: tuple[int, bytearray, int] | None = None  # READ data being received
        self._lost: str | None = None
        self._closed = False
        self._quickack = sock.family in (socket.AF_INET, socket.AF_INET6)
        self._loop.add_reader(self._fd, self._on_readable)

    @classmethod
    async def connect(cls, uri: str, *, timeout: float = 10.0) -> NbdClient:
        host, port, export = parse_uri(uri)
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(timeout):
                sock = await open_socket(loop, host, port)
                info = await handshake(loop, sock, export, uri)
        except BaseException as exc:
            if sock is not None:
                sock.close()
            if isinstance(exc, TimeoutError):
                raise NbdConnectError(f"{uri}: no NBD handshake within {timeout:g} s") from None
            if isinstance(exc, OSError):
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                raise NbdConnectError(f"cannot connect to {uri}: {why}") from None
            raise
        return cls(sock, uri, info)

    @property
    def alive(self) -> bool:
        return self._lost is None

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        await self.submit(CMD_WRITE, offset, len(data), data)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self.submit(CMD_WRITE_ZEROES, offset, length)

    async def flush(self) -> None:
        if self.info.can_flush:  # a server without FLUSH writes through
            await self.submit(CMD_FLUSH, 0, 0)

    async def read(self, offset: int, length: int) -> Data:
        return await self.submit(CMD_READ, offset, length)

    def submit(
        self, cmd: int, offset: int, length: int, payload: bytes | memoryview | None = None
    ) -> asyncio.Future[Data]:
        """Send a request now; the future gets the reply (READ data, else b"")."""
        if self._lost is not None:
            raise self._lost_error()
        if cmd == CMD_WRITE_ZEROES and not self.info.can_write_zeroes:
            raise NbdError(f"{self.uri}: the server does not support WRITE_ZEROES")
        cookie = next(self._cookies)
        future: asyncio.Future[Data] = self._loop.create_future()
        self._pending[cookie] = (future, cmd, offset, length)
        self._out.append(memoryview(REQUEST.pack(REQUEST_MAGIC, 0, cmd, cookie, offset, length)))
        if payload is not None:
            self._out.append(memoryview(payload))
        if not self._writing and not self._send_soon:
            self._send_soon = True
            self._loop.call_soon(self._send_queued)
        return future

    def _send_queued(self) -> None:
        self._send_soon = False
        if not self._writing:
            self._send()

    def _send(self) -> None:
        """Header and payload go in one sendmsg, with no copy: no lone 28-byte
        segment for the server to wake up for (libnbd uses MSG_MORE for that)."""
        while self._out:
            try:
                sent = self._sock.sendmsg(list(itertools.islice(self._out, 64)))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._fail(f"send failed: {exc.strerror or exc}")
                return
            while sent:
                head = self._out[0]
                if len(head) > sent:
                    self._out[0] = head[sent:]
                    break
                sent -= len(head)
                self._out.popleft()
        if self._out and not self._writing:
            self._loop.add_writer(self._fd, self._send)
            self._writing = True
        elif not self._out and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _on_readable(self) -> None:
        try:
            if self._payload is not None:  # straight into the READ buffer, no staging copy
                cookie, data, got = self._payload
                n = self._sock.recv_into(memoryview(data)[got:])
                self._payload = (cookie, data, got + n)
            else:
                if self._start == self._end:
                    self._start = self._end = 0
                elif self._end == len(self._buf):  # keep the unparsed tail, make room
                    self._buf[: self._end - self._start] = self._buf[self._start : self._end]
                    self._start, self._end = 0, self._end - self._start
                n = self._sock.recv_into(self._view[self._end :])
                self._end += n
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            return
        if n == 0:
            self._fail("the server closed the connection")
            return
        if self._quickack:
            quickack(self._sock)
        try:
            self._parse()
        except ValueError as exc:
            self._fail(str(exc))

    def _parse(self) -> None:
        while self._lost is None:
            if self._payload is not None:
                cookie, data, got = self._payload
                if got < len(data):
                    return
                self._payload = None
                # The buffer itself, no copy: a 4 MiB copy is also 4 MiB of
                # fresh pages to fault in (large blocks are mmap'd: limits.py).
                self._complete(cookie, 0, data)
                continue
            if self._end - self._start < REPLY.size:
                return
            magic, err, cookie = REPLY.unpack_from(self._buf, self._start)
            self._start += REPLY.size
            if magic != SIMPLE_REPLY_MAGIC:
                raise ValueError(f"bad reply magic {magic:#x}")
            entry = self._pending.get(cookie)
            if entry is None:
                raise ValueError(f"reply for unknown cookie {cookie}")
            if entry[1] != CMD_READ or err:
                self._complete(cookie, err, b"")
                continue
            data = bytearray(entry[3])
            have = min(len(data), self._end - self._start)
            data[:have] = self._view[self._start : self._start + have]
            self._start += have
            self._payload = (cookie, data, have)

    def _complete(self, cookie: int, err: int, data: Data) -> None:
        future, cmd, offset, length = self._pending.pop(cookie)
        if future.done():  # its caller was cancelled
            return
        if err == ESHUTDOWN:  # spec: the client must disconnect; a retry may succeed
            future.set_exception(self._lost_error("the server is shutting down"))
            self._fail("the server is shutting down (ESHUTDOWN)")
        elif err:
            future.set_exception(self._server_error(cmd, offset, length, err))
        else:
            future.set_result(data)

    def _server_error(self, cmd: int, offset: int, length: int, err: int) -> NbdServerError:
        name = NBD_ERRNO.get(err, f"errno {err}")
        why = f" ({os.strerror(getattr(errno, name))})" if err in NBD_ERRNO else ""
        return NbdServerError(
            f"{self.uri}: {CMD_NAMES.get(cmd, str(cmd))} of {length} bytes at offset {offset} "
            f"failed: {name}{why}; export size {self.info.size}",
            name,
        )

    def _lost_error(self, reason: str | None = None) -> NbdConnectionLost:
        return NbdConnectionLost(f"{self.uri}: connection lost: {reason or self._lost}")

    def _fail(self, reason: str) -> None:
        """Fail every pending request now, and every later one at once."""
        if self._lost is not None:
            return
        self._lost = reason
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._out.clear()
        pending, self._pending = self._pending, {}
        for future, *_ in pending.values():
            if not future.done():
                future.set_exception(self._lost_error())
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    async def close(self) -> None:
        """Soft disconnect when idle (NBD_CMD_DISC), then close; pending requests fail."""
        if self._closed:
            return
        self._closed = True
        if self._lost is None and not self._pending and not self._out:
            with contextlib.suppress(OSError):  # 28 bytes into an idle socket: no wait
                self._sock.send(REQUEST.pack(REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        self._fail("the client closed the connection")
        self._view.release()
        self._sock.close()

    async def __aenter__(self) -> NbdClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
