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


class Meter:
    def __init__(self, progress: DiskCounters) -> None:
        self.progress = progress
        self.started = time.monotonic()

    def advance(self, length: int) -> None:
        p = self.progress
        p.bytes_done += length
        p.seconds = max(time.monotonic() - self.started, 1e-6)
        p.rate_bytes_per_s = p.bytes_done / p.seconds
        remaining = p.bytes_total - p.bytes_done
        p.eta_seconds = remaining / p.rate_bytes_per_s if p.rate_bytes_per_s else None
