"""A log per task: timestamped, leveled lines in `<data_dir>/task-logs/<id>.log`.

One line per record, readable with `tail -f`:

    2026-12-01T06:40:00.123456+00:00 INFO hub the node took the snapshot

(time in UTC, level, source: `hub` or `node`, the message with its newlines
escaped). A line's number (from 1) is its place in the file: `read(after=N)` is
what came after the N-th line, so a reader that polls or reconnects asks for
what it has not seen. Files are the hub's (0600 in a 0700 directory); a task's
log is removed with its row (housekeeping).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SOURCES = ("hub", "node")
_TASK_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class LogLine:
    n: int
    at: datetime
    level: str
    source: str
    message: str


def _escape(message: str) -> str:
    return message.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def _unescape(text: str) -> str:
    out: list[str] = []
    chars = iter(text)
    for c in chars:
        if c != "\\":
            out.append(c)
            continue
        nxt = next(chars, "")
        out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(nxt, "\\" + nxt))
    return "".join(out)


@dataclass(frozen=True)
class LogCursor:
    """Where a reader of a log is: lines read, and the byte offset after them (None:
    not known yet, found by counting lines)."""

    line: int = 0
    offset: int | None = None


class TaskLogs:
    """The task log files of one hub."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    def path(self, task_id: str) -> Path:
        if not _TASK_ID.fullmatch(task_id):
            raise ValueError(f"not a task id: {task_id!r}")
        return self.directory / f"{task_id}.log"

    def append(
        self,
        task_id: str,
        level: str,
        message: str,
        source: str = "hub",
        at: datetime | None = None,
    ) -> None:
        level = level.upper()
        if level not in LEVELS:
            level = "INFO"
        if source not in SOURCES:
            raise ValueError(f"unknown log source {source!r}")
        when = (at or datetime.now(UTC)).astimezone(UTC).isoformat()
        line = f"{when} {level} {source} {_escape(message)}\n".encode()
        with self._lock:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path(task_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def read(self, task_id: str, after: int = 0, limit: int = 1000) -> list[LogLine]:
        """Lines after the `after`-th, at most `limit`; none (no error) when the
        log has no such line or does not exist."""
        return self.follow(task_id, LogCursor(after), limit)[0]

    def follow(
        self, task_id: str, cursor: LogCursor, limit: int = 1000
    ) -> tuple[list[LogLine], LogCursor]:
        """The lines after `cursor`, at most `limit`, and the cursor after them: a
        reader that comes back with it reads on from its byte offset, not from the
        first line again (a live stream looks every quarter of a second)."""
        lines: list[LogLine] = []
        n, offset = cursor.line, cursor.offset
        try:
            with self.path(task_id).open("rb") as f:
                if offset is None:  # only a line number: count up to it once
                    offset, skipped = 0, 0
                    while skipped < n:
                        raw = f.readline()
                        if not raw.endswith(b"\n"):
                            return [], LogCursor(skipped, offset)
                        offset, skipped = offset + len(raw), skipped + 1
                f.seek(offset)
                while len(lines) < limit:
                    raw = f.readline()
                    if not raw.endswith(b"\n"):
                        break  # the end, or a line still being written
                    n, offset = n + 1, offset + len(raw)
                    lines.append(_parse(n, raw.decode(errors="replace").rstrip("\n")))
        except FileNotFoundError:
            pass
        return lines, LogCursor(n, offset)

    def remove(self, task_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(task_id).unlink()

    def task_ids(self) -> list[str]:
        """The tasks that have a log here."""
        if not self.directory.is_dir():
            return []
        return [p.stem for p in self.directory.glob("*.log") if _TASK_ID.fullmatch(p.stem)]


def _parse(n: int, text: str) -> LogLine:
    parts = text.split(" ", 3)
    while len(parts) < 4:
        parts.append("")
    when, level, source, message = parts
    try:
        at = datetime.fromisoformat(when)
    except ValueError:
        at = datetime.fromtimestamp(0, UTC)
    return LogLine(n, at, level, source, _unescape(message))
