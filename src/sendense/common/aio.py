"""asyncio helpers."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in a (nested) group: the one that made siblings cancel."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


async def run_all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run together; the first failure cancels the others and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except BaseExceptionGroup as exc:
        raise first_error(exc) from None


class Handoff(Generic[T]):
    """Items from a thread to a coroutine, in order. The thread wakes the event
    loop once for however many items arrive before the loop takes them, not
    once an item (a wake-up is a write to the loop's self-pipe and a turn of
    the GIL)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._ready = asyncio.Event()

    def put(self, item: T) -> None:
        """From any thread."""
        with self._lock:
            self._items.append(item)
            if self._wake_pending:
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._ready.set()

    async def get(self) -> T:
        """On the loop: the next item, once there is one."""
        while True:
            self._ready.clear()
            with self._lock:
                if self._items:
                    return self._items.popleft()
            await self._ready.wait()
