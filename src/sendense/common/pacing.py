"""A rate in bytes per second shared by every sender (threads or coroutines): each
send reserves its slot in time, starting where the last one ended or now, so the
total never runs ahead of the rate. The hub's copy uploads wait for their slot
in a thread (hub/copy/bucket.py), the node's NBD data in its event loop
(node/limits.py)."""

from __future__ import annotations

import threading
import time


class RateSlots:
    def __init__(self, mb_s: float | None) -> None:
        """`mb_s` in MB/s (10^6 bytes); None: no limit."""
        self.rate = mb_s * 1e6 if mb_s else None
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> float:
        """Seconds the sender of `size` bytes waits before sending them."""
        if self.rate is None:
            return 0.0
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + size / self.rate
            return start - now
