"""What the node's disk streams share: one memory budget and one bandwidth limit.

A stream (one disk's copy, engine.py) holds at most `(2 * readers + in_flight)
* chunk` bytes of data at once (a read's buffer is copied once into its bytes),
and a 256 KiB reply buffer per NBD connection: 65 MiB with the defaults (4
connections). Before it opens its NBD connections it takes that much from the
node's `MemoryBudget`; a stream that does not fit waits, in the order streams
asked, until running ones give theirs back. So a hundred streams at once (the
whole NBD port pool) run as many at a time as the budget holds, and the process
does not grow with the count.

`Bandwidth` paces the bytes every stream of the node sends as NBD data (zeroes
cost no bandwidth: they go as WRITE_ZEROES or not at all): a site that shares a
thin link with the hub gives the node a limit in MB/s.

`RestoreFirst` puts a restore ahead of the backups: while at least one restore
copies disks on the node, the backup streams of the node together have at most
`backup_reads_during_restore` chunk reads going at once (a small number, at
least 1: backups slow down but never stop), and read at most
`backup_mb_s_during_restore` together. When no restore copies, a backup's read
passes with a counter's increment, no lock and no wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from sendense.common.pacing import RateSlots

log = logging.getLogger(__name__)
MiB = 1 << 20


def return_freed_buffers() -> None:
    """glibc only: blocks of 1 MiB and more get a mapping of their own, given back
    to the system when freed. By default glibc raises that threshold to the size
    of the largest block freed, and 4 MiB chunks then come from per-thread heaps
    that keep what they once held: measured with 40 streams, the node's peak
    RSS went from 1245 to 1043 MiB with this."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3
    if not libc.mallopt(m_mmap_threshold, MiB):
        log.warning("malloc kept its own threshold: freed buffers may stay in the heap")


class MemoryBudget:
    """Bytes handed out to streams, first come first served. A stream that needs
    more than the whole budget gets the whole budget (alone): it always runs.

    A restore's stream (`at_once`) never waits: it takes its share at once, over
    the budget if it must, and backups wait until the held bytes are under the
    budget again. A restore that waited for a backup stream to end would wait
    for backups it slows down itself (RestoreFirst); so the node holds at most
    the budget plus its restores' streams."""

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("the memory budget must be positive")
        self.total = total
        self.held = 0
        self.peak = 0
        self.waits = 0  # streams that had to wait, since the node started
        self.grants = 0  # streams that got their share, since the node started
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    def share(self, wanted: int) -> int:
        return min(wanted, self.total)

    @asynccontextmanager
    async def hold(self, wanted: int, what: str, at_once: bool = False) -> AsyncIterator[int]:
        """Hold `share(wanted)` bytes while the block runs; `at_once` (a
        restore's): without waiting, over the budget if need be."""
        size = self.share(wanted)
        if at_once:
            self._take(size)
            try:
                yield size
            finally:
                self._give_back(size)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, granted)
        self._queue.append(entry)
        self._grant()
        if not granted.done():
            self.waits += 1
            log.info(
                "%s waits for the node's memory budget (%d of %d MiB held, %d waiting)",
                what,
                self.held // MiB,
                self.total // MiB,
                len(self._queue),
            )
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self._give_back(size)  # granted as it was cancelled
            else:
                with contextlib.suppress(ValueError):  # _grant may have dropped it
                    self._queue.remove(entry)
                self._grant()
            raise
        try:
            yield size
        finally:
            self._give_back(size)

    def _take(self, size: int) -> None:
        self.grants += 1
        self.held += size
        self.peak = max(self.peak, self.held)

    def _give_back(self, size: int) -> None:
        self.held -= size
        self._grant()

    def _grant(self) -> None:
        """Wake waiting streams in order while the first of them fits; one that
        was cancelled meanwhile is dropped."""
        while self._queue:
            size, granted = self._queue[0]
            if granted.done():
                self._queue.popleft()
                continue
            if self.held + size > self.total:
                return
            self._queue.popleft()
            self._take(size)
            granted.set_result(None)


class Bandwidth(RateSlots):
    """A node-wide rate (None: unlimited), shared by every stream."""

    async def take(self, size: int) -> None:
        wait = self.reserve(size)
        if wait > 0:
            await asyncio.sleep(wait)


class RestoreFirst:
    """The node's priority of restores over backups.

    A restore holds `restoring()` while it copies its disks; a backup stream
    holds `backup_read()` around each chunk read (engine.py). While any restore
    holds it, a backup read starts only when fewer than `backup_reads` of them
    are in flight node-wide, in the order they asked, and with `backup_mb_s`
    after its slot in that rate; reads already going when a restore starts
    finish their chunk. When the last restore ends (done, failed or cancelled)
    every waiting read goes at once."""

    def __init__(self, backup_reads: int = 2, backup_mb_s: float | None = None) -> None:
        if backup_reads < 1:
            raise ValueError("backups keep at least one read during a restore")
        self.backup_reads = backup_reads
        # What the backups read together while a restore copies (None: no rate).
        self.rate = RateSlots(backup_mb_s)
        self.paced_s = 0.0  # the backups' reads' waits for that rate, summed
        self.restores = 0  # restores copying now
        self.restored = 0  # restores that held it, since the node started
        self.reads = 0  # backup chunk reads in flight, node-wide
        self.yields = 0  # backup reads that had to wait, since the node started
        self._queue: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Backup reads waiting for a restore now."""
        return len(self._queue)

    @contextmanager
    def restoring(self, what: str) -> Iterator[None]:
        """Backups yield to this restore while the block runs."""
        self.restores += 1
        self.restored += 1
        log.info(
            "%s copies: the node's backups read at most %d chunks at once meanwhile "
            "(%d restores copying)",
            what,
            self.backup_reads,
            self.restores,
        )
        try:
            yield
        finally:
            self.restores -= 1
            self._grant()

    async def acquire(self) -> bool:
        """Take a backup read's place; True when it had to wait for a restore."""
        if not self.restores and not self._queue:
            self.reads += 1
            return False
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(granted)
        self._grant()
        if granted.done():
            return False
        self.yields += 1
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.release()  # granted as it was cancelled
            else:
                with contextlib.suppress(ValueError):  # _grant may have dropped it
                    self._queue.remove(granted)
            raise
        return True

    def release(self) -> None:
        self.reads -= 1
        if self._queue:
            self._grant()

    @asynccontextmanager
    async def backup_read(self, size: int = 0) -> AsyncIterator[BackupRead]:
        """A backup's place for one read of `size` bytes while the block runs,
        after its slot in the backups' rate when a restore copies; `done()`
        gives the place back early (once the data is in, before it is written)."""
        place = BackupRead(self, await self.acquire())
        try:
            if self.restores and size:
                wait = self.rate.reserve(size)
                if wait > 0:
                    place.waited = True
                    self.paced_s += wait
                    await asyncio.sleep(wait)
            yield place
        finally:
            place.done()

    def _grant(self) -> None:
        """Wake waiting reads in order while there is room; a cancelled one is dropped."""
        while self._queue:
            granted = self._queue[0]
            if granted.done():
                self._queue.popleft()
                continue
            if self.restores and self.reads >= self.backup_reads:
                return
            self._queue.popleft()
            self.reads += 1
            granted.set_result(None)


class BackupRead:
    """One backup read's place at the gate."""

    __slots__ = ("_gate", "waited")

    def __init__(self, gate: RestoreFirst, waited: bool) -> None:
        self._gate: RestoreFirst | None = gate
        self.waited = waited  # it waited for a restore

    def done(self) -> None:
        """Give the place back (once; later calls do nothing)."""
        if self._gate is not None:
            self._gate.release()
            self._gate = None
