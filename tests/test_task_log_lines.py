"""What goes into a task's log: the runner's lines at its state changes, every
record logged while its work runs (and none logged elsewhere), the node's lines
once each, never a secret; on the node, a task's records on its status."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sendense.common.contract import TaskLogLine, TaskStatus
from sendense.common.errors import Conflict
from sendense.common.logging import install_redaction, register_secret
from sendense.hub.db.database import Database
from sendense.hub.db.models import Job, JobState, TaskKind, Vm
from sendense.hub.retention.rules import KeepRules
from sendense.hub.service import Hub
from sendense.hub.tasks import task_log_handler
from sendense.hub.tasks.runner import TaskRunner
from sendense.hub.tasks.task_log import TaskLogs
from sendense.hub.tasks.task_log_handler import NodeLines
from sendense.node import task_log as node_task_log
from sendense.node.task_table import TaskTable
from tests.test_merge_safety import make_points
from tests.test_task_runner import new_task, wait_ended

work_log = logging.getLogger("sendense.tests.task_work")
library_log = logging.getLogger("some_library")


@pytest.fixture(autouse=True)
def info_records() -> Iterator[None]:
    """The records a hub logs at INFO (its root logger's level in production)."""
    task_log_handler.install()
    node_task_log.install()
    loggers = [work_log, logging.getLogger("sendense"), library_log]
    before = [x.level for x in loggers]
    for x in loggers:
        x.setLevel(logging.INFO)
    yield
    for x, level in zip(loggers, before, strict=True):
        x.setLevel(level)


def messages(logs: TaskLogs, task_id: str) -> list[tuple[str, str, str]]:
    return [(line.level, line.source, line.message) for line in logs.read(task_id)]


def wait_lines(logs: TaskLogs, task_id: str, count: int) -> None:
    """The runner writes its end line just after the row's end."""
    deadline = time.monotonic() + 10
    while len(logs.read(task_id)) < count:
        assert time.monotonic() < deadline, messages(logs, task_id)
        time.sleep(0.02)


def test_a_task_log_holds_its_states_and_what_its_work_logged(db: Database, tmp_path: Path) -> None:
    logs = TaskLogs(tmp_path / "task-logs")
    runner: TaskRunner[int] = TaskRunner(db, workers=2, logs=logs)
    outside = threading.Event()
    secret = f"pw-{uuid.uuid4().hex}"
    install_redaction()
    register_secret(secret)

    def works() -> str:
        work_log.info("reading disk %d", 2000)
        work_log.info("logging in with %s", secret)
        library_log.info("GET /status 200")  # a library's chatter: not the task's
        library_log.warning("retrying GET /status")
        outside.wait(5)
        return "3 disks"

    def fails() -> None:
        work_log.warning("the VM is locked")
        raise Conflict("VM busy")

    try:
        ok, bad = new_task(db), new_task(db)
        runner.queue(ok, works)
        runner.queue(bad, fails)
        work_log.info("a line of no task")  # this thread works on no task
        outside.set()
        wait_ended(db, ok)
        wait_ended(db, bad)
        wait_lines(logs, ok, 6)
        wait_lines(logs, bad, 5)
    finally:
        runner.shutdown()

    assert messages(logs, ok) == [
        ("INFO", "hub", "task queued"),
        ("INFO", "hub", "task started"),
        ("INFO", "hub", "reading disk 2000"),
        ("INFO", "hub", "logging in with ***"),
        ("WARNING", "hub", "retrying GET /status"),
        ("INFO", "hub", "task complete: 3 disks"),
    ]
    assert messages(logs, bad) == [
        ("INFO", "hub", "task queued"),
        ("INFO", "hub", "task started"),
        ("WARNING", "hub", "the VM is locked"),
        ("WARNING", "hub", f"task failed task={bad}: VM busy"),
        ("ERROR", "hub", "task failed: VM busy"),
    ]
    assert secret not in logs.path(ok).read_text()
    assert all("a line of no task" not in m for t in (ok, bad) for _, _, m in messages(logs, t))


def test_a_log_that_cannot_be_written_never_fails_the_task(db: Database, tmp_path: Path) -> None:
    in_the_way = tmp_path / "task-logs"
    in_the_way.write_bytes(b"")  # a file where the directory should be
    runner: TaskRunner[int] = TaskRunner(db, workers=1, logs=TaskLogs(in_the_way))
    try:

        def works() -> str:
            work_log.info("a line nowhere to go")
            return "done"

        task_id = new_task(db)
        runner.queue(task_id, works)
        job = wait_ended(db, task_id)
    finally:
        runner.shutdown()
    assert (job.state, job.error) == (JobState.COMPLETE, "done")


def _line(seq: int, message: str) -> TaskLogLine:
    return TaskLogLine(seq=seq, at=1_764_000_000.0 + seq, level="INFO", message=message)


def test_node_lines_are_kept_once_each_and_a_gap_is_said(tmp_path: Path) -> None:
    logs = TaskLogs(tmp_path)
    task = uuid.uuid4().hex
    lines = NodeLines(logs)
    lines.copy(task, [_line(1, "job started"), _line(2, "snapshot created")])
    lines.copy(task, [_line(1, "job started"), _line(2, "snapshot created")])  # polled again
    lines.copy(task, [_line(2, "snapshot created"), _line(3, "copy planned")])
    lines.copy(task, [_line(7, "copy done")])  # 4-6 fell off the node's list
    assert messages(logs, task) == [
        ("INFO", "node", "job started"),
        ("INFO", "node", "snapshot created"),
        ("INFO", "node", "copy planned"),
        ("WARNING", "node", "3 node lines not received"),
        ("INFO", "node", "copy done"),
    ]
    assert logs.read(task)[0].at.timestamp() == 1_764_000_001.0  # the node's time


@dataclass
class _Job:
    status: TaskStatus
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    request: dict[str, Any] = field(default_factory=dict)


def test_a_node_task_sends_its_own_records_latest_first_kept() -> None:
    table: TaskTable[_Job] = TaskTable()
    job = _Job(TaskStatus(job_id="j1", vm_name="vm", state="queued", started_at=time.time()))
    other = _Job(TaskStatus(job_id="j2", vm_name="vm2", state="queued", started_at=time.time()))

    async def work() -> None:
        work_log.info("in the task")
        await asyncio.to_thread(work_log.info, "in a thread of the task")
        await asyncio.gather(asyncio.create_task(_sub()))
        for n in range(node_task_log.KEEP_LINES + 10):
            work_log.info("line %d", n)

    async def _sub() -> None:
        work_log.warning("in a sub-task")

    async def quiet() -> None:
        await asyncio.sleep(0)

    async def both() -> None:
        await asyncio.gather(table.run(job, work()), table.run(other, quiet()))
        work_log.info("after the task")

    asyncio.run(both())

    log = job.status.log
    assert job.status.state == "complete"
    assert len(log) == node_task_log.KEEP_LINES
    assert [x.seq for x in log] == list(range(log[0].seq, log[0].seq + len(log)))
    assert log[-1].message == "job complete job=j1"
    assert log[-2].message == f"line {node_task_log.KEEP_LINES + 9}"
    assert log[-1].seq == 3 + node_task_log.KEEP_LINES + 10 + 1

    small = _Job(TaskStatus(job_id="j3", vm_name="vm3", state="queued", started_at=time.time()))

    async def few() -> None:
        work_log.info("in the task")
        await asyncio.to_thread(work_log.info, "in a thread of the task")
        await asyncio.create_task(_sub())

    asyncio.run(table.run(small, few()))
    assert [(x.seq, x.level, x.message) for x in small.status.log] == [
        (1, "INFO", "in the task"),
        (2, "INFO", "in a thread of the task"),
        (3, "WARNING", "in a sub-task"),
        (4, "INFO", "job complete job=j3"),
    ]
    assert [x.message for x in other.status.log] == ["job complete job=j2"]


def test_a_task_the_hub_restart_ended_says_so_in_its_log(db_hub: Hub) -> None:
    with db_hub.db.session() as s:
        vm = Vm(name="vm-restarted")
        s.add(vm)
        s.flush()
        job = Job(vm_id=vm.id, kind=TaskKind.BACKUP, state=JobState.RUNNING)
        s.add(job)
        s.flush()
        task_id = job.id
    db_hub.task_logs.append(task_id, "INFO", "backup started")
    db_hub.reconcile()
    assert messages(db_hub.task_logs, task_id) == [
        ("INFO", "hub", "backup started"),
        ("ERROR", "hub", "backup failed: the hub restarted during the job"),
    ]


def test_a_prunes_log_says_what_it_did(hub: Hub, tmp_path: Path) -> None:
    make_points(hub, tmp_path / "repo", "vm1", 3)
    result = hub.prune.run("vm1", KeepRules(last=1))
    assert len(result.removed) == 2
    lines = messages(hub.task_logs, result.job_id)
    assert lines[0] == ("INFO", "hub", "prune started vm=vm1")
    assert ("INFO", "hub", f"prune done job={result.job_id} vm=vm1 removed=2") in lines
    assert lines[-1] == ("INFO", "hub", "prune complete")
