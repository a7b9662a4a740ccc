"""asyncio helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any


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
