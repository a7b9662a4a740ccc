"""A task's log file: lines come back in order with their number, level and
source; a reader asks for what came after the last line it saw."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest

from sendense.hub.tasks.task_log import LogCursor, TaskLogs


def test_lines_read_back_after_a_number_and_nothing_past_the_end(tmp_path: Path) -> None:
    logs = TaskLogs(tmp_path / "task-logs")
    task = uuid.uuid4().hex
    logs.append(task, "info", "the node took the snapshot")
    logs.append(task, "WARNING", "disk 2000 read as a full: no change id\nsecond line", "node")
    logs.append(task, "error", "back\\slash")

    lines = logs.read(task)
    assert [(x.n, x.level, x.source) for x in lines] == [
        (1, "INFO", "hub"),
        (2, "WARNING", "node"),
        (3, "ERROR", "hub"),
    ]
    assert lines[1].message == "disk 2000 read as a full: no change id\nsecond line"
    assert lines[2].message == "back\\slash"
    assert [x.n for x in logs.read(task, after=1)] == [2, 3]
    assert logs.read(task, after=3) == []
    assert logs.read(task, after=99) == []
    assert logs.read(uuid.uuid4().hex) == []  # no log yet: nothing, no error
    assert len(logs.read(task, limit=2)) == 2

    path = logs.path(task)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with path.open("ab") as f:
        f.write(b"2026-12-01T00:00:00+00:00 INFO hub half a li")  # still being written
    assert [x.n for x in logs.read(task)] == [1, 2, 3]

    assert logs.task_ids() == [task]
    logs.remove(task)
    assert logs.read(task) == []


def test_a_task_id_is_never_a_path(tmp_path: Path) -> None:
    logs = TaskLogs(tmp_path)
    with pytest.raises(ValueError, match="not a task id"):
        logs.append("../../etc/passwd", "INFO", "x")


def test_a_follower_reads_on_from_where_it_stopped_and_never_half_a_line(
    tmp_path: Path,
) -> None:
    logs = TaskLogs(tmp_path / "logs")
    task = uuid.uuid4().hex
    for n in range(1, 6):
        logs.append(task, "INFO", f"line {n}")
    first, cursor = logs.follow(task, LogCursor(), limit=3)
    assert [x.message for x in first] == ["line 1", "line 2", "line 3"]
    assert cursor.line == 3
    # A line being written (no newline yet) is not read, and the cursor waits before it.
    with logs.path(task).open("ab") as f:
        f.write(b"2026-12-01T00:00:00+00:00 INFO hub half")
    rest, cursor = logs.follow(task, cursor)
    assert [x.n for x in rest] == [4, 5]
    assert logs.follow(task, cursor)[0] == []
    with logs.path(task).open("ab") as f:
        f.write(b" a line\n")
    logs.append(task, "WARNING", "line 7")
    last, cursor = logs.follow(task, cursor)
    assert [(x.n, x.message) for x in last] == [(6, "half a line"), (7, "line 7")]
    # From a line number alone (a reconnect's Last-Event-ID), the same lines.
    again, _ = logs.follow(task, LogCursor(5))
    assert [x.n for x in again] == [6, 7]
    assert logs.follow(task, LogCursor(99)) == ([], LogCursor(7, cursor.offset))
