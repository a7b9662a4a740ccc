"""Housekeeping (issue 14, point 6) on each database backend: this hub's ended
tasks older than `task_retention_days` go with their logs; recent ones, active
ones, another hub's, and those a restore point or a kept task refers to stay;
a log whose task has no row goes after an hour; finished progress leaves memory."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta

from sqlalchemy import select

from sendense.hub.db.models import (
    Job,
    JobState,
    PointStatus,
    Repository,
    RestorePoint,
    TaskKind,
    Vm,
    utcnow,
)
from sendense.hub.service import Hub
from sendense.hub.tasks.runner import ProgressBoard
from sendense.hub.verify.verifier import VerifyProgress


def test_old_ended_tasks_and_their_logs_go_and_the_rest_stays(db_hub: Hub) -> None:
    hub = db_hub
    assert hub.settings.task_retention_days == 60
    now = utcnow()
    days = timedelta(days=1)
    ids: dict[str, str] = {}
    with hub.db.session() as s:
        vm = Vm(name="vm-housekeeping")
        repo = Repository(name="hk", path=f"/nonexistent/{uuid.uuid4().hex}")
        s.add_all([vm, repo])
        s.flush()

        def task(name: str, state: JobState, age_days: float, **extra: object) -> Job:
            at = now - age_days * days
            ended = None if state in (JobState.RUNNING, JobState.QUEUED) else at
            job = Job(
                vm_id=vm.id,
                kind=TaskKind.BACKUP,
                state=state,
                created_at=at - timedelta(minutes=5),
                finished_at=ended,
                **extra,
            )
            s.add(job)
            s.flush()
            ids[name] = job.id
            return job

        task("old complete", JobState.COMPLETE, 61)
        task("old failed", JobState.FAILED, 200)
        task("old cancelled", JobState.CANCELLED, 90)
        task("recent", JobState.COMPLETE, 59)
        task("old but running", JobState.RUNNING, 90)
        task("old of another hub", JobState.COMPLETE, 90, hub_id=uuid.uuid4().hex)
        pointed = task("old with a restore point", JobState.COMPLETE, 300)
        s.add(
            RestorePoint(
                vm_id=vm.id,
                job_id=pointed.id,
                repository_id=repo.id,
                status=PointStatus.COMPLETE,
            )
        )
        run = task("old schedule run, recent child", JobState.COMPLETE, 70)
        task("its recent child", JobState.COMPLETE, 1, parent_id=run.id)
        gone = task("old schedule run, old child", JobState.COMPLETE, 70)
        task("its old child", JobState.FAILED, 69, parent_id=gone.id)
    for task_id in ids.values():
        hub.task_logs.append(task_id, "INFO", "backup started")
    stale_orphan, fresh_orphan = uuid.uuid4().hex, uuid.uuid4().hex
    for orphan in (stale_orphan, fresh_orphan):
        hub.task_logs.append(orphan, "INFO", "a task whose row is gone")
    two_hours_ago = time.time() - 7200
    os.utime(hub.task_logs.path(stale_orphan), (two_hours_ago, two_hours_ago))

    report = hub.housekeeping()

    removed = {
        "old complete",
        "old failed",
        "old cancelled",
        "old schedule run, old child",
        "its old child",
    }
    with hub.db.session() as s:
        rows = set(s.scalars(select(Job.id)))
    assert {name for name, task_id in ids.items() if task_id in rows} == set(ids) - removed
    logged = set(hub.task_logs.task_ids())
    assert {name for name, task_id in ids.items() if task_id in logged} == set(ids) - removed
    assert stale_orphan not in logged
    assert fresh_orphan in logged
    assert report.removed_tasks == len(removed)
    assert report.removed_logs == len(removed) + 1
    assert hub.task_logs.read(ids["recent"])[0].message == "backup started"

    again = hub.housekeeping()  # nothing more to do
    assert (again.removed_tasks, again.removed_logs) == (0, 0)


def test_finished_progress_leaves_memory_without_another_put(db_hub: Hub) -> None:
    clock = [1000.0]
    board: ProgressBoard[VerifyProgress] = ProgressBoard(keep_s=300, clock=lambda: clock[0])
    db_hub.verifications.board = board
    running, finished = VerifyProgress(), VerifyProgress()
    board.put("running", running)
    board.put("finished", finished)
    board.ended("finished")
    clock[0] += 299
    db_hub.evict_progress()
    assert board.get("finished") is finished  # a client polling late still sees it
    clock[0] += 2
    db_hub.evict_progress()  # nothing was put meanwhile: the loop evicts it
    assert board.get("finished") is None
    assert board.get("running") is running
    assert len(board) == 1
