"""Attempts per key (a client address, a user name) in a sliding window, in
memory: a restart forgets them, which costs an attacker one restart's worth of
tries."""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from sendense.common.errors import TooManyAttempts


class AttemptLimiter:
    def __init__(self, attempts: int, window_s: float, what: str) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.what = what
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def attempt(self, key: str, shown: str | None = None) -> float:
        """Count one attempt of `key`; TooManyAttempts when the window is full (the
        message says `shown`, else "from <key>"). Returns the attempt's stamp,
        for `forgive`."""
        now = time.monotonic()
        with self._lock:
            for old in [k for k, q in self._seen.items() if q and q[-1] <= now - self.window_s]:
                del self._seen[old]  # keys that went quiet: the table stays small
            recent = self._seen.setdefault(key, deque())
            while recent and recent[0] <= now - self.window_s:
                recent.popleft()
            if len(recent) >= self.attempts:
                wait = math.ceil(recent[0] + self.window_s - now)
                raise TooManyAttempts(
                    f"too many {self.what} attempts {shown or f'from {key}'}: retry in {wait} s",
                    wait,
                )
            recent.append(now)
            return now

    def forgive(self, key: str, stamp: float) -> None:
        """Take back an attempt that succeeded: only failures fill the window, yet
        every attempt is counted while it runs (a burst cannot slip past)."""
        with self._lock:
            recent = self._seen.get(key)
            if recent is not None and stamp in recent:
                recent.remove(stamp)
