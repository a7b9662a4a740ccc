"""Which queued tasks run: the hub's limit, a limit per node and per repository,
in the order tasks came, no task starved; through the task runner on a real
database, every task ends complete."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from sendense.hub.db.database import Database
from sendense.hub.db.models import Job, JobState
from sendense.hub.tasks.admission import Admission
from sendense.hub.tasks.runner import TaskRunner
from tests.test_task_runner import new_task, wait_ended


class Starts:
    """Records which tasks were started (they run until `leave`)."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.waits: dict[str, str] = {}

    def start(self, name: str) -> Callable[[], None]:
        return lambda: self.order.append(name)

    def waited(self, task_id: str, reason: str) -> None:
        self.waits[task_id] = reason


def test_a_full_node_holds_only_its_own_tasks() -> None:
    starts = Starts()
    gate = Admission(3, {"node": 1}, starts.waited)
    gate.enter("a1", ["node:a"], starts.start("a1"))
    gate.enter("a2", ["node:a"], starts.start("a2"))
    gate.enter("b1", ["node:b"], starts.start("b1"))
    assert starts.order == ["a1", "b1"]
    assert starts.waits == {"a2": "node a runs 1, its limit"}
    assert (gate.running_count, gate.waiting) == (2, 1)
    gate.leave(["node:a"])
    assert starts.order == ["a1", "b1", "a2"]
    assert (gate.running_count, gate.waiting) == (2, 0)


def test_the_hubs_limit_holds_over_every_node() -> None:
    starts = Starts()
    gate = Admission(2, {"node": 5}, starts.waited)
    for name in ("a1", "b1", "c1"):
        gate.enter(name, [f"node:{name[0]}"], starts.start(name))
    assert starts.order == ["a1", "b1"]
    assert "the hub's limit" in starts.waits["c1"]
    gate.leave(["node:b"])
    assert starts.order == ["a1", "b1", "c1"]


def test_a_waiting_task_keeps_its_place_on_every_claim() -> None:
    """x waits for node a; y (node b, same repository) may not take the
    repository's last slot before x: x would wait as long as others come."""
    starts = Starts()
    gate = Admission(10, {"node": 1, "repository": 2}, starts.waited)
    gate.enter("a1", ["node:a", "repository:r"], starts.start("a1"))
    gate.enter("x", ["node:a", "repository:r"], starts.start("x"))
    gate.enter("y", ["node:b", "repository:r"], starts.start("y"))
    gate.enter("z", ["node:c", "repository:s"], starts.start("z"))
    assert starts.order == ["a1", "z"]
    assert starts.waits["y"] == "an earlier task waits for repository r"
    gate.leave(["node:a", "repository:r"])
    assert starts.order == ["a1", "z", "x", "y"]


def test_the_runner_keeps_each_nodes_limit_and_runs_every_task(db: Database) -> None:
    """Six tasks on node a (two at a time), two on node b: at no moment more than
    two of a's run, b's do not wait behind a's, every task completes."""
    runner: TaskRunner[int] = TaskRunner(db, workers=4, limits={"node": 2})
    lock = threading.Lock()
    now: Counter[str] = Counter()
    most: Counter[str] = Counter()
    started: dict[str, float] = {}
    release = threading.Event()

    def work(task_id: str, node: str) -> Callable[[], str | None]:
        def run() -> str | None:
            with lock:
                now[node] += 1
                most[node] = max(most[node], now[node])
                started[task_id] = time.monotonic()
            release.wait(10)
            time.sleep(0.05)
            with lock:
                now[node] -= 1
            return None

        return run

    try:
        tasks = [(new_task(db), "a") for _ in range(6)] + [(new_task(db), "b") for _ in range(2)]
        for task_id, node in tasks:
            runner.queue(task_id, work(task_id, node), [f"node:{node}"])
        deadline = time.monotonic() + 10
        while len(started) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        b_tasks = [t for t, n in tasks if n == "b"]
        assert all(t in started for t in b_tasks), "node b's tasks waited behind node a's"
        release.set()
        ended = [wait_ended(db, task_id) for task_id, _ in tasks]
    finally:
        release.set()
        runner.shutdown()
    assert [job.state for job in ended] == [JobState.COMPLETE] * 8
    assert most == {"a": 2, "b": 2}
    with db.session() as s:
        waiting = [t for t, _ in tasks if s.get_one(Job, t).state != JobState.COMPLETE]
    assert waiting == []
