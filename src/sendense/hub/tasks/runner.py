"""The one base for the hub's long operations (backup, whole-VM restore, verify).

A runner queues a task on its own worker pool, keeps the task's live progress
in memory while it runs (and for `keep_finished_s` after it ends, so a client
that polls a moment late still sees the last figures, then evicts it), moves
the task's row through its states with a guarded update (a state set by
someone else, a hub stop say, is never overwritten), and handles errors one
way: an expected `SendenseError` (or an NBD failure) fails the task with its message, anything
else fails it as an internal error and is logged with its traceback. A task's end
is recorded even across a database outage: while the database refuses, the
record is tried again (a task left "running" would keep its VM locked, its
exports and ports until the hub restarts). Each task has a log
(task_log.py): a line when it is queued, starts and ends (its state and
error), every record logged while its work runs, and its node's lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError

from sendense.common.contract import TaskLogLine, TaskStatus
from sendense.common.errors import SendenseError, TaskNotRunning
from sendense.hub.db.database import Database
from sendense.hub.db.models import ACTIVE_JOB_STATES, Job, JobState, utcnow
from sendense.hub.tasks.admission import Admission
from sendense.hub.tasks.task_log import TaskLogs
from sendense.hub.tasks.task_log_handler import NodeLines, task_context, write_line
from sendense.hub.tasks.vm_lock import unlock_vm
from sendense.nbd.errors import NbdError

log = logging.getLogger(__name__)
P = TypeVar("P")
S = TypeVar("S", bound=TaskStatus)


def split_log(status: S) -> tuple[S, list[TaskLogLine]]:
    """A node's status as progress (its log lines go to the task's log, not to
    every client that polls the progress) and its log lines."""
    return status.model_copy(update={"log": []}), status.log


def internal_error(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {exc}"


class ProgressBoard(Generic[P]):
    """Live progress by task id; a finished task's entry is dropped after `keep_s`."""

    def __init__(self, keep_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.keep_s = keep_s
        self.clock = clock
        self._live: dict[str, P] = {}
        self._ended: dict[str, float] = {}
        self._lock = threading.Lock()

    def put(self, task_id: str, progress: P) -> None:
        with self._lock:
            self._live[task_id] = progress
            self._evict()

    def get(self, task_id: str) -> P | None:
        with self._lock:
            return self._live.get(task_id)

    def ended(self, task_id: str) -> None:
        with self._lock:
            if task_id in self._live:
                self._ended[task_id] = self.clock()
            self._evict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def evict(self) -> None:
        """Drop what has been kept long enough now (the hub calls it periodically:
        a board nobody writes to any more forgets its finished tasks too)."""
        with self._lock:
            self._evict()

    def _evict(self) -> None:
        now = self.clock()
        for task_id, at in list(self._ended.items()):
            if now - at >= self.keep_s:
                del self._ended[task_id]
                self._live.pop(task_id, None)


class TaskRunner(Generic[P]):
    """Subclasses queue a task's work as a callable that returns a note for the
    completed task (or None); `start`, `fail` and `complete` may be overridden
    where a ledger owns the task's states (backups)."""

    name = "task"

    def __init__(
        self,
        db: Database,
        workers: int,
        keep_finished_s: float = 300.0,
        record_retry_s: float = 600.0,
        logs: TaskLogs | None = None,
        limits: Mapping[str, int] | None = None,
    ) -> None:
        """`limits`: tasks at once per claim kind (admission.py), for tasks queued
        with claims; the worker count is the limit of them all."""
        self.db = db
        self.logs = logs
        self.node_lines = NodeLines(logs)
        self.board: ProgressBoard[P] = ProgressBoard(keep_finished_s)
        self.record_retry_s = record_retry_s
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{self.name}-task")
        self.admission = Admission(workers, limits or {}, self._waits)

    def progress(self, task_id: str) -> P | None:
        return self.board.get(task_id)

    def shutdown(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def queue(
        self, task_id: str, work: Callable[[], str | None], claims: Sequence[str] = ()
    ) -> None:
        """Run `work` on a worker once its `claims` ("node:n1", ...) have room."""
        self.log_line(task_id, "INFO", f"{self.name} queued")
        self.admission.enter(task_id, claims, lambda: self._start(task_id, work, claims))

    def _start(self, task_id: str, work: Callable[[], str | None], claims: Sequence[str]) -> None:
        if self._stopping.is_set():
            return  # the hub stops: start-up's reconcile ends what is still queued
        try:
            self._pool.submit(self._admitted, task_id, work, claims)
        except RuntimeError:  # shut down between the check and the submit
            log.info("%s task=%s not started: the hub stops", self.name, task_id)

    def _waits(self, task_id: str, reason: str) -> None:
        self.log_line(task_id, "INFO", f"{self.name} waits: {reason}")

    def _admitted(
        self, task_id: str, work: Callable[[], str | None], claims: Sequence[str]
    ) -> None:
        try:
            self._run(task_id, work)
        finally:
            self.admission.leave(claims)

    def log_line(self, task_id: str, level: str, message: str) -> None:
        """An explicit line in the task's log (its state changes)."""
        if self.logs is not None:
            write_line(self.logs, task_id, level, message)

    def record_node(self, task_id: str, progress: P, lines: list[TaskLogLine]) -> None:
        """A node's status of the task: its progress, and its new log lines."""
        self.board.put(task_id, progress)
        self.node_lines.copy(task_id, lines)

    def set_state(self, task_id: str, state: JobState, error: str | None = None) -> bool:
        """Move an active task on; False when it has ended already (a hub stop, a
        failure recorded elsewhere): an ended task is never revived."""
        values: dict[str, object] = {"state": state, "error": error}
        if state in ACTIVE_JOB_STATES:
            values["started_at"] = utcnow()
        else:
            values["finished_at"] = utcnow()
        with self.db.session() as s:
            done = s.execute(
                update(Job)
                .where(Job.id == task_id, Job.state.in_(ACTIVE_JOB_STATES))
                .values(**values)
            )
            return getattr(done, "rowcount", 0) == 1

    def start(self, task_id: str) -> bool:
        return self.set_state(task_id, JobState.RUNNING)

    def fail(self, task_id: str, message: str) -> None:
        self.set_state(task_id, JobState.FAILED, message)

    def complete(self, task_id: str, note: str | None) -> None:
        self.set_state(task_id, JobState.COMPLETE, note)

    def _run(self, task_id: str, work: Callable[[], str | None]) -> None:
        with task_context(self.logs, task_id):
            try:
                self._run_logged(task_id, work)
            finally:
                self.board.ended(task_id)
                self.node_lines.forget(task_id)

    def _run_logged(self, task_id: str, work: Callable[[], str | None]) -> None:
        """The end line is written once the end is recorded (no database work after
        it: a hub closing once the row says ended finds nothing still using it)."""
        if not self.start(task_id):
            self.log_line(task_id, "WARNING", f"{self.name} not started: it had ended already")
            return
        self.log_line(task_id, "INFO", f"{self.name} started")
        try:
            note = work()
        except (SendenseError, NbdError) as exc:
            log.warning("%s failed task=%s: %s", self.name, task_id, exc.message)
            reason = exc.message
            code = exc.code if isinstance(exc, SendenseError) else "nbd_error"
            self._record(task_id, lambda: self._failed(task_id, reason, code))
            if isinstance(exc, TaskNotRunning):  # an operator's cancel, a hub stop
                self.log_line(task_id, "WARNING", f"{self.name} ended: {reason}")
            else:
                self.log_line(task_id, "ERROR", f"{self.name} failed: {reason}")
            return
        except Exception as exc:
            log.exception("%s crashed task=%s", self.name, task_id)
            message = internal_error(exc)
            self._record(task_id, lambda: self._failed(task_id, message, "internal_error"))
            self.log_line(task_id, "ERROR", f"{self.name} failed: {message}")
            return
        self._record(task_id, lambda: self.complete(task_id, note))
        self.log_line(task_id, "INFO", f"{self.name} complete" + (f": {note}" if note else ""))

    def _failed(self, task_id: str, reason: str, code: str) -> None:
        """`fail` with the error's stable code. The code goes on the row first:
        once `fail` has ended the task, a caller that saw it end may close the
        database, and no work of this task may still hold a connection."""
        with self.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == task_id, Job.state.in_(ACTIVE_JOB_STATES))
                .values(error_code=code)
            )
        self.fail(task_id, reason)

    def _record(self, task_id: str, action: Callable[[], None]) -> None:
        """Run `action` (the task's end), again while the database is unavailable,
        for up to `record_retry_s` or until the hub stops (start-up's clean-up then
        ends the task)."""
        deadline = time.monotonic() + self.record_retry_s
        delay = 0.5
        while True:
            try:
                action()
                return
            except DBAPIError as exc:
                if self._stopping.is_set() or time.monotonic() + delay > deadline:
                    log.error("%s task=%s: its end is not recorded: %s", self.name, task_id, exc)
                    raise
                log.warning(
                    "%s task=%s: the database is unavailable; recording its end again in %.1fs",
                    self.name,
                    task_id,
                    delay,
                )
            self._stopping.wait(delay)
            delay = min(delay * 2, 10.0)


class VmTaskRunner(TaskRunner[P]):
    """A runner whose tasks hold their VM (`vm_lock.lock_vm` at submission): the
    lock goes however the task ends."""

    def complete(self, task_id: str, note: str | None) -> None:
        super().complete(task_id, note)
        self._release(task_id)

    def fail(self, task_id: str, message: str) -> None:
        super().fail(task_id, message)
        self._release(task_id)

    def _release(self, task_id: str) -> None:
        with self.db.session() as s:
            unlock_vm(s, task_id)
