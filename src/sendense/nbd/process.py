"""Facts about processes read from /proc, and stopping a process we did not start."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    argv: list[str]
    start_ticks: int


def process_info(pid: int) -> ProcessInfo | None:
    """The process's argv and start time, or None when it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    if not raw or fields[0] == "Z":
        return None
    argv = [part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")]
    return ProcessInfo(pid=pid, argv=argv, start_ticks=int(fields[19]))


def is_alive(pid: int) -> bool:
    return process_info(pid) is not None


def terminate_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL; for processes that are not our children."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not is_alive(pid):
                return
            time.sleep(0.05)


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Our own child: SIGTERM, wait up to `timeout`, then SIGKILL. Returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
