"""A node task's own log lines, sent back to the hub with its status.

While a task runs, `capture(status)` makes every log record of its asyncio task
(and of the threads it starts with `asyncio.to_thread`, which copy the context)
a numbered line on `status.log`; only the latest `keep` lines stay. The hub
polls the status, asking for the lines numbered after the last one it has
(`?log_after=N`), and keeps them. A record's message is scrubbed of
registered secrets and `password=` patterns, as in every other log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sendense.common.contract import TaskLogLine, TaskStatus
from sendense.common.logging import about_a_task, record_message

KEEP_LINES = 500  # the hub reads a status every 0.25 s: it never falls this far behind


class TaskLines:
    """The numbered, bounded lines of one task, on its status."""

    def __init__(self, status: TaskStatus, keep: int = KEEP_LINES) -> None:
        self.status = status
        self.keep = keep
        self._lock = threading.Lock()
        self._seq = status.log[-1].seq if status.log else 0

    def add(self, at: float, level: str, message: str) -> None:
        with self._lock:
            self._seq += 1
            # A new list each time: a status being serialized meanwhile keeps the old one.
            line = TaskLogLine(seq=self._seq, at=at, level=level, message=message)
            self.status.log = [*self.status.log, line][-self.keep :]


_current: ContextVar[TaskLines | None] = ContextVar("node_task_lines", default=None)


@contextmanager
def capture(status: TaskStatus) -> Iterator[None]:
    """Records logged in this context (and tasks and threads started from it) go
    to `status.log`; nested captures of the same status are one."""
    current = _current.get()
    if current is not None and current.status is status:
        yield
        return
    token = _current.set(TaskLines(status))
    try:
        yield
    finally:
        _current.reset(token)


class TaskLineHandler(logging.Handler):
    """Copies records logged inside a `capture` to that task's lines."""

    def emit(self, record: logging.LogRecord) -> None:
        lines = _current.get()
        if lines is None or not about_a_task(record):
            return
        try:
            lines.add(record.created, record.levelname, record_message(record))
        except Exception:  # a log line never breaks the task
            self.handleError(record)


def install(level: int = logging.INFO) -> None:
    """Once per process: the root logger copies task records to their tasks."""
    root = logging.getLogger()
    if not any(isinstance(h, TaskLineHandler) for h in root.handlers):
        root.addHandler(TaskLineHandler(level))
