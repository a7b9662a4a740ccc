"""Where one disk's copy waits: on the source or on the target.

The copy is a pipeline: `readers` coroutines each read a chunk, then hand it to
the NBD writer, which keeps up to `in_flight` writes on the wire. Adding every
wait up would count overlapped waits several times, so the measure is per
reader: a reader is either waiting for its read (the source holds the copy up)
or blocked handing its chunk over because the writer's slots are all taken by
writes not yet acknowledged (the target holds it up). Those reader-seconds,
divided by the readers, are wall-clock-equivalent seconds. After the readers
end, the writer's last acknowledgements and the NBD flush are target time in
full (nothing else runs then). A reader waiting for a restore on the node
(limits.py `RestoreFirst`) waits on neither side: that wait is not counted.

The target's figure is the NBD round trip as the node sees it: the tunnel and
the hub's write, which cannot be told apart from here (docs/decisions.md).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sendense.common.progress import EVERY_S
from sendense.common.time_split import TimeSplit, judge

T = TypeVar("T")


class Pace:
    def __init__(self, split: TimeSplit, readers: int) -> None:
        self.split = split
        self.readers = max(readers, 1)
        self._reading = 0.0  # reader-seconds
        self._blocked = 0.0  # reader-seconds
        self._draining = 0.0  # wall seconds, after the readers
        self._next = 0.0  # the split is published at most every EVERY_S

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A reader waits for its data."""
        start = time.monotonic()
        try:
            yield
        finally:
            now = time.monotonic()
            self._reading += now - start
            self._publish(now)

    @contextmanager
    def handing_over(self) -> Iterator[None]:
        """A reader waits for the writer to take its chunk."""
        start = time.monotonic()
        try:
            yield
        finally:
            now = time.monotonic()
            self._blocked += now - start
            self._publish(now)

    @contextmanager
    def draining(self) -> Iterator[None]:
        """The readers are done; the writer's last requests and the flush."""
        start = time.monotonic()
        try:
            yield
        finally:
            self._draining += time.monotonic() - start
            self._publish(None)  # the last figures, whenever the previous were

    async def arrivals(self, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """`source`'s items, the wait for each counted as reading."""
        while True:
            with self.reading():
                try:
                    item = await anext(source)
                except StopAsyncIteration:
                    return
            yield item

    def _publish(self, now: float | None) -> None:
        """Into the progress record, at most every EVERY_S (None: now)."""
        if now is not None:
            if now < self._next:
                return
            self._next = now + EVERY_S
        split = self.split
        split.source_s = self._reading / self.readers
        split.target_s = self._blocked / self.readers + self._draining
        split.bottleneck = judge(split.source_s, split.target_s)
