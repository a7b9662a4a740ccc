"""Following a task on a node: poll its status until it ends; a node silent for
longer than `node_timeout` fails the task."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from sendense.common.contract import TERMINAL_STATES
from sendense.common.errors import Unavailable


class _Status(Protocol):
    @property
    def state(self) -> str: ...


S = TypeVar("S", bound=_Status)


def follow_node_task(
    fetch: Callable[[], S],
    node: str,
    *,
    poll: float | Callable[[], float],
    node_timeout: float,
    record: Callable[[S], None],
    check: Callable[[], None] | None = None,
) -> S:
    """`record` sees every status; `check` runs between polls and may raise to stop.
    `poll`: seconds between polls, or what says them before each wait."""
    interval = poll if callable(poll) else lambda: poll
    last_answer = time.monotonic()
    while True:
        try:
            status = fetch()
            last_answer = time.monotonic()
        except Unavailable as exc:
            silent = time.monotonic() - last_answer
            if silent > node_timeout:
                raise Unavailable(
                    f"node {node!r} did not answer for {silent:.0f}s: {exc.message}"
                ) from exc
            time.sleep(interval())
            continue
        record(status)
        if status.state in TERMINAL_STATES:
            return status
        if check is not None:
            check()
        time.sleep(interval())
