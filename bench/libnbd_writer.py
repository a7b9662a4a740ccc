"""The same writer interface as sendense.nbd.writer.NbdWriter, over libnbd's aio API.

Only for the benchmark: it answers "would libnbd (C) beat our asyncio client?".
libnbd's socket is driven from the asyncio loop (add_reader/add_writer on its
fd), so both candidates run under the same event loop and the same producer.
Same zero handling as NbdWriter: zero chunks found with an in-place compare,
adjacent ones coalesced into WRITE_ZEROES. No reconnect: not needed to measure.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import nbd

from sendense.nbd.writer import MAX_ZERO_REQUEST, WriteStats


class LibnbdWriter:
    def __init__(
        self,
        uri: str,
        *,
        max_in_flight: int = 8,
        request_size: int = 4 << 20,
        skip_zeroes: bool = False,
    ) -> None:
        self.uri = uri
        self.max_in_flight = max_in_flight
        self.request_size = request_size
        self.skip_zeroes = skip_zeroes
        self.size = 0
        self.stats = WriteStats()
        self._h = nbd.NBD()
        self._fd = -1
        self._watching = 0  # AIO_DIRECTION bits registered with the loop
        self._zero = memoryview(bytes(request_size))
        self._zero_run: tuple[int, int] | None = None
        self._buffers: dict[int, Any] = {}  # keeps each payload alive until its reply
        self._keys = 0
        self._wake: asyncio.Event = asyncio.Event()
        self._error: str | None = None

    async def __aenter__(self) -> LibnbdWriter:
        await asyncio.to_thread(self._h.connect_uri, self.uri)
        self.size = self._h.get_size()
        self._fd = self._h.aio_get_fd()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._fd)
        loop.remove_writer(self._fd)
        self._h.shutdown()
        del self._h  # frees the handle (libnbd 1.14 has no close())

    def _pump(self) -> None:
        """Register for exactly the directions libnbd's state machine waits on."""
        loop = asyncio.get_running_loop()
        want = self._h.aio_get_direction() & nbd.AIO_DIRECTION_BOTH
        changed = want ^ self._watching
        if changed & nbd.AIO_DIRECTION_READ:
            if want & nbd.AIO_DIRECTION_READ:
                loop.add_reader(self._fd, self._ready, nbd.AIO_DIRECTION_READ)
            else:
                loop.remove_reader(self._fd)
        if changed & nbd.AIO_DIRECTION_WRITE:
            if want & nbd.AIO_DIRECTION_WRITE:
                loop.add_writer(self._fd, self._ready, nbd.AIO_DIRECTION_WRITE)
            else:
                loop.remove_writer(self._fd)
        self._watching = want

    def _ready(self, direction: int) -> None:
        try:
            if direction == nbd.AIO_DIRECTION_READ:
                self._h.aio_notify_read()
            else:
                self._h.aio_notify_write()
        except nbd.Error as exc:
            self._error = str(exc)
            self._wake.set()
        self._pump()

    def _done(self, key: int, length: int, kind: str) -> Any:
        def callback(err: Any) -> int:
            self._buffers.pop(key, None)
            if err.value:
                self._error = self._error or f"{self.uri}: {kind} failed: errno {err.value}"
            elif kind == "write":
                self.stats.data_bytes += length
            elif kind == "zero":
                self.stats.zero_bytes += length
            self._wake.set()
            return 1  # retire the command

        return callback

    async def _slot(self) -> None:
        while self._h.aio_in_flight() >= self.max_in_flight and self._error is None:
            self._wake.clear()
            await self._wake.wait()
        if self._error is not None:
            raise RuntimeError(self._error)

    async def _issue(self, kind: str, offset: int, length: int, data: Any = None) -> None:
        await self._slot()
        self._keys += 1
        key = self._keys
        callback = self._done(key, length, kind)
        if kind == "write":
            # Plain bytes, not nbd.Buffer.from_buffer(): with libnbd 1.14 every
            # nbd.Buffer handed to aio_pwrite leaks (1 GiB per GiB written).
            self._buffers[key] = data
            self._h.aio_pwrite(data, offset, completion=callback)
        elif kind == "zero":
            self._h.aio_zero(length, offset, completion=callback)
        else:
            self._h.aio_flush(completion=callback)
        self.stats.requests += 1
        self._pump()

    async def write(self, offset: int, data: bytes) -> None:
        size, pos = len(data), 0
        while pos < size:
            n = min(self.request_size, size - pos)
            if data.startswith(self._zero[:n], pos, pos + n):
                await self._zeroes(offset + pos, n)
            else:
                await self._emit_zero_run()
                chunk = data if n == size else data[pos : pos + n]
                await self._issue("write", offset + pos, n, chunk)
            pos += n

    async def zero(self, offset: int, length: int) -> None:
        await self._zeroes(offset, length)

    async def _zeroes(self, offset: int, length: int) -> None:
        if self.skip_zeroes:
            self.stats.zero_bytes += length
            return
        run = self._zero_run
        if run is not None and run[0] + run[1] == offset:
            self._zero_run = (run[0], run[1] + length)
        else:
            await self._emit_zero_run()
            self._zero_run = (offset, length)
        if self._zero_run[1] >= MAX_ZERO_REQUEST:
            await self._emit_zero_run()

    async def _emit_zero_run(self) -> None:
        if self._zero_run is None:
            return
        (offset, length), self._zero_run = self._zero_run, None
        for pos in range(offset, offset + length, MAX_ZERO_REQUEST):
            await self._issue("zero", pos, min(MAX_ZERO_REQUEST, offset + length - pos))

    async def drain(self) -> None:
        await self._emit_zero_run()
        while self._h.aio_in_flight() and self._error is None:
            self._wake.clear()
            await self._wake.wait()
        if self._error is not None:
            raise RuntimeError(self._error)

    async def flush(self) -> None:
        await self.drain()
        await self._issue("flush", 0, 0)
        await self.drain()
