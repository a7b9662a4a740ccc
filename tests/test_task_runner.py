"""The task runner base and node-task following, on a real database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy.exc import OperationalError

from sendense.common.errors import Conflict, Unavailable
from sendense.hub.db.database import Database
from sendense.hub.db.models import Job, JobState, TaskKind, Vm
from sendense.hub.tasks.node_task import follow_node_task
from sendense.hub.tasks.runner import ProgressBoard, TaskRunner
from sendense.nbd.errors import NbdConnectionLost


def new_task(db: Database) -> str:
    with db.session() as s:
        vm = Vm(name=f"vm-{time.monotonic_ns()}")
        s.add(vm)
        s.flush()
        job = Job(vm_id=vm.id, kind=TaskKind.VERIFY)
        s.add(job)
        s.flush()
        return job.id


def wait_ended(db: Database, task_id: str) -> Job:
    deadline = time.monotonic() + 10
    while True:
        with db.session() as s:
            job = s.get_one(Job, task_id)
            if job.state not in (JobState.QUEUED, JobState.RUNNING):
                return job
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_each_outcome_sets_its_state_and_message(db: Database) -> None:
    runner: TaskRunner[int] = TaskRunner(db, workers=2)
    try:
        outcomes = {
            "done": (lambda: None, JobState.COMPLETE, None),
            "noted": (lambda: "2 of 3 invalid", JobState.COMPLETE, "2 of 3 invalid"),
            "refused": (_raise(Conflict("VM busy")), JobState.FAILED, "VM busy"),
            "nbd": (_raise(NbdConnectionLost("lost")), JobState.FAILED, "lost"),
            "bug": (_raise(KeyError("k")), JobState.FAILED, "internal error: KeyError: 'k'"),
        }
        ids = {}
        for name, (work, _, _) in outcomes.items():
            ids[name] = new_task(db)
            runner.queue(ids[name], work)
        for name, (_, state, error) in outcomes.items():
            job = wait_ended(db, ids[name])
            assert (job.state, job.error) == (state, error), name
            assert job.started_at is not None
            assert job.finished_at is not None
    finally:
        runner.shutdown()


def _raise(exc: Exception) -> Callable[[], None]:
    def work() -> None:
        raise exc

    return work


def test_an_ended_task_is_never_revived(db: Database) -> None:
    runner: TaskRunner[int] = TaskRunner(db, workers=1)
    try:
        task_id = new_task(db)
        started = threading.Event()
        release = threading.Event()

        def work() -> None:
            started.set()
            release.wait(10)

        runner.queue(task_id, work)
        assert started.wait(10)
        assert runner.set_state(task_id, JobState.FAILED, "the hub stopped")  # a hub stop
        release.set()
        time.sleep(0.2)
        with db.session() as s:
            job = s.get_one(Job, task_id)
        assert (job.state, job.error) == (JobState.FAILED, "the hub stopped")
        assert not runner.set_state(task_id, JobState.RUNNING)
    finally:
        runner.shutdown()


def test_progress_of_an_ended_task_is_evicted_after_its_grace() -> None:
    now = [100.0]
    board: ProgressBoard[int] = ProgressBoard(keep_s=30, clock=lambda: now[0])
    board.put("a", 1)
    board.put("b", 2)
    board.ended("a")
    now[0] += 29
    assert board.get("a") == 1  # a client polling a moment late still sees it
    now[0] += 2
    board.put("b", 3)
    assert board.get("a") is None
    assert board.get("b") == 3
    assert len(board) == 1


class Status:
    def __init__(self, state: str) -> None:
        self.state = state


def test_following_a_node_task_records_each_status_until_it_ends() -> None:
    answers = iter(["queued", "running", "running", "complete"])
    seen: list[str] = []
    last = follow_node_task(
        lambda: Status(next(answers)),
        "site-a",
        poll=0.001,
        node_timeout=5,
        record=lambda s: seen.append(s.state),
    )
    assert last.state == "complete"
    assert seen == ["queued", "running", "running", "complete"]


def test_the_poll_interval_is_asked_before_each_wait() -> None:
    """A runner whose interval grows with its running tasks (backups) says it
    again before every wait, not once for the whole task."""
    answers = iter(["queued", "running", "running", "complete"])
    asked: list[int] = []

    def interval() -> float:
        asked.append(len(asked))
        return 0.001

    follow_node_task(
        lambda: Status(next(answers)),
        "site-a",
        poll=interval,
        node_timeout=5,
        record=lambda _: None,
    )
    assert asked == [0, 1, 2]


def test_a_node_silent_past_its_timeout_fails_the_follow() -> None:
    def down() -> Status:
        raise Unavailable("connection refused")

    with pytest.raises(Unavailable) as silent:
        follow_node_task(down, "site-a", poll=0.01, node_timeout=0.2, record=lambda _: None)
    assert "site-a" in silent.value.message


def test_a_blip_shorter_than_the_timeout_is_ridden_out() -> None:
    answers: list[Status | Exception] = [
        Status("running"),
        Unavailable("refused"),
        Unavailable("refused"),
        Status("complete"),
    ]

    def fetch() -> Status:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    last = follow_node_task(fetch, "site-a", poll=0.01, node_timeout=5, record=lambda _: None)
    assert last.state == "complete"


class _OutageRunner(TaskRunner[int]):
    """Its first `refusals` attempts to record a task's end meet a lost database."""

    def __init__(self, db: Database, refusals: int) -> None:
        super().__init__(db, workers=1)
        self.refusals = refusals

    def fail(self, task_id: str, message: str) -> None:
        if self.refusals:
            self.refusals -= 1
            raise OperationalError("UPDATE jobs", {}, ConnectionRefusedError("server down"))
        super().fail(task_id, message)


def test_a_tasks_end_is_recorded_once_the_database_answers_again(db: Database) -> None:
    runner = _OutageRunner(db, refusals=2)
    try:
        task_id = new_task(db)
        runner.queue(task_id, _raise(Conflict("VM busy")))
        job = wait_ended(db, task_id)  # retried after 0.5 s, then 1 s
        assert (job.state, job.error) == (JobState.FAILED, "VM busy")
        assert runner.refusals == 0
    finally:
        runner.shutdown()
