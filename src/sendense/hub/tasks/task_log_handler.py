"""What goes into a task's log (task_log.py) on the hub.

`task_context(logs, task_id)` marks the code working on a task (the runner's
worker thread): every record of Sendense logged there at INFO and above (and
every warning) becomes a `hub` line of that task's log. `NodeLines` copies
the lines a node sends with a task's status, each once, as `node` lines.
Messages are scrubbed of secrets, as in every other log. The handler is
installed once per process; the context says which hub's logs (several hubs
run in one test process).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from sendense.common.contract import TaskLogLine
from sendense.common.logging import about_a_task, record_message, redact
from sendense.hub.tasks.task_log import TaskLogs

log = logging.getLogger(__name__)
_current: ContextVar[tuple[TaskLogs, str] | None] = ContextVar("hub_task_log", default=None)


def write_line(
    logs: TaskLogs,
    task_id: str,
    level: str,
    message: str,
    source: str = "hub",
    at: datetime | None = None,
) -> None:
    """A line in a task's log; a log that cannot be written (a full disk) never
    fails the task: it is said in the hub's log instead."""
    try:
        logs.append(task_id, level, message, source, at)
    except OSError as exc:
        token = _current.set(None)  # not again into the log that failed
        try:
            log.warning("task log not written task=%s: %s", task_id, exc)
        finally:
            _current.reset(token)


@contextmanager
def task_context(logs: TaskLogs | None, task_id: str) -> Iterator[None]:
    """Records logged here go to `task_id`'s log (nowhere more when `logs` is None)."""
    if logs is None:
        yield
        return
    token = _current.set((logs, task_id))
    try:
        yield
    finally:
        _current.reset(token)


class TaskLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        current = _current.get()
        if current is None or not about_a_task(record):
            return
        logs, task_id = current
        try:
            at = datetime.fromtimestamp(record.created, UTC)
            write_line(logs, task_id, record.levelname, record_message(record), "hub", at)
        except Exception:  # a log line never breaks the task
            self.handleError(record)


def install(level: int = logging.INFO) -> None:
    """Once per process: the root logger copies task records to their logs."""
    root = logging.getLogger()
    if not any(isinstance(h, TaskLogHandler) for h in root.handlers):
        root.addHandler(TaskLogHandler(level))


class NodeLines:
    """The node lines of the tasks being followed: each line once, in order."""

    def __init__(self, logs: TaskLogs | None) -> None:
        self.logs = logs
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def copy(self, task_id: str, lines: list[TaskLogLine]) -> None:
        if self.logs is None:
            return
        with self._lock:
            seen = self._seen.get(task_id, 0)
            new = [line for line in lines if line.seq > seen]
            if not new:
                return
            if new[0].seq > seen + 1:
                lost = new[0].seq - seen - 1
                write_line(self.logs, task_id, "WARNING", f"{lost} node lines not received", "node")
            for line in new:
                at = datetime.fromtimestamp(line.at, UTC)
                write_line(self.logs, task_id, line.level, redact(line.message), "node", at)
            self._seen[task_id] = new[-1].seq

    def seen(self, task_id: str) -> int:
        """The number of the last node line kept: the node sends those after it."""
        with self._lock:
            return self._seen.get(task_id, 0)

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._seen.pop(task_id, None)
