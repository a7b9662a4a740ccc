"""Bytes done, rate and ETA of one disk's copy, kept in its progress record."""

from __future__ import annotations

import time
from typing import Protocol


class DiskCounters(Protocol):
    bytes_total: int
    bytes_done: int
    seconds: float
    rate_bytes_per_s: float
    eta_seconds: float | None


# Rate and ETA are worked out at most this often: an incremental's 64 KiB
# blocks come every few hundred microseconds, and each field set on the
# progress record (a pydantic model) costs a few microseconds of the event loop.
EVERY_S = 0.05


class Meter:
    def __init__(self, progress: DiskCounters) -> None:
        self.progress = progress
        self.started = time.monotonic()
        self._next = 0.0

    def advance(self, length: int) -> None:
        p = self.progress
        p.bytes_done += length
        now = time.monotonic()
        if now >= self._next or p.bytes_done >= p.bytes_total:
            self._next = now + EVERY_S
            self._figures(now)

    def _figures(self, now: float) -> None:
        p = self.progress
        p.seconds = max(now - self.started, 1e-6)
        p.rate_bytes_per_s = p.bytes_done / p.seconds
        remaining = p.bytes_total - p.bytes_done
        p.eta_seconds = remaining / p.rate_bytes_per_s if p.rate_bytes_per_s else None
