"""Which queued tasks start now: at most `total` at once, and at most a limit per
claim kind (a node, a repository): "node:n1" counts against the `node` limit.

Queued tasks wait in the order they came. A task starts when everything it
claims has room; a task that cannot start reserves its claims: no younger task
takes a slot of its node or its repository before it. So a busy node does not
hold up tasks of other nodes, and no task waits forever (every task ahead of it
on its node and repository ends, and then it is first).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class _Queued:
    order: int
    task_id: str
    claims: tuple[str, ...]
    start: Callable[[], None]
    told: bool = field(default=False)  # its wait has been reported


def kind_of(claim: str) -> str:
    return claim.split(":", 1)[0]


class Admission:
    def __init__(
        self,
        total: int,
        limits: Mapping[str, int],
        on_wait: Callable[[str, str], None] | None = None,
    ) -> None:
        """`on_wait(task_id, reason)` is called once for a task that has to wait."""
        self.total = total
        self.limits = dict(limits)
        self.on_wait = on_wait
        self.running: Counter[str] = Counter()
        self._started = 0
        self._queue: list[_Queued] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    @property
    def running_count(self) -> int:
        """Tasks admitted and not yet ended."""
        with self._lock:
            return self._started

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._queue)

    def enter(self, task_id: str, claims: Sequence[str], start: Callable[[], None]) -> None:
        """Queue a task; `start` runs (outside the lock) once it is admitted."""
        with self._lock:
            self._queue.append(_Queued(next(self._order), task_id, tuple(claims), start))
        self._admit()

    def leave(self, claims: Sequence[str]) -> None:
        """An admitted task has ended: its slots go to those waiting."""
        with self._lock:
            self._started -= 1
            self.running.subtract(claims)
        self._admit()

    def _admit(self) -> None:
        starts: list[Callable[[], None]] = []
        waits: list[tuple[str, str]] = []
        with self._lock:
            reserved: set[str] = set()
            for queued in list(self._queue):
                reason = self._why_not(queued.claims, reserved)
                if reason is None:
                    self._queue.remove(queued)
                    self._started += 1
                    self.running.update(queued.claims)
                    starts.append(queued.start)
                    continue
                reserved.update(queued.claims)
                if not queued.told:
                    queued.told = True
                    waits.append((queued.task_id, reason))
        for task_id, reason in waits:
            if self.on_wait is not None:
                self.on_wait(task_id, reason)
        for start in starts:
            start()

    def _why_not(self, claims: tuple[str, ...], reserved: set[str]) -> str | None:
        if self._started >= self.total:
            return f"{self._started} tasks run, the hub's limit"
        for claim in claims:
            limit = self.limits.get(kind_of(claim))
            if limit is not None and self.running[claim] >= limit:
                return f"{claim.replace(':', ' ', 1)} runs {self.running[claim]}, its limit"
            if claim in reserved:
                return f"an earlier task waits for {claim.replace(':', ' ', 1)}"
        return None
