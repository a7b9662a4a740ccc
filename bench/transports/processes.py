"""The benchmark's child processes, stopped with all their descendants (PROCS), and
the CPU they and the whole machine used, read from /proc."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields proper start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def proc_start_time(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[19]) if f else None


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f:
                children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def tree_cpu(roots: list[int]) -> dict[int, float]:
    """pid -> utime+stime+cutime+cstime (s) for each root and its descendants.

    Summing the children's fields too keeps the delta right when a process that
    existed at the first snapshot has exited and been reaped by the second."""
    out: dict[int, float] = {}
    for root in roots:
        for pid in [root, *descendants(root)]:
            f = _stat_fields(pid)
            if f:
                out[pid] = sum(int(x) for x in f[11:15]) / CLK_TCK
    return out


def system_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def wait_quiet(limit: float, max_wait: float = 180.0) -> float:
    """Wait (up to max_wait s) until the machine is quiet: busy below `limit` of one core
    in three 0.5 s samples in a row. Other sessions share this machine. Returns the wait."""
    start, calm = time.monotonic(), 0
    while time.monotonic() - start < max_wait and calm < 3:
        b0, t0 = system_busy(), time.monotonic()
        time.sleep(0.5)
        load = (system_busy() - b0) / (time.monotonic() - t0)
        calm = calm + 1 if load < limit else 0
    return time.monotonic() - start


class Procs:
    """Every child process of the benchmark: stopped in reverse order, descendants too."""

    def __init__(self) -> None:
        self.items: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with log.open("ab") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stderr=err, start_new_session=True, **kw
            )
        self.items.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        # sshd's per-connection children call setsid(): a process-group kill misses
        # them, so they are collected by parentage (and checked by start time).
        kids = [(pid, proc_start_time(pid)) for pid in descendants(proc.pid)]
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [(p, st) for p, st in kids if st is not None and proc_start_time(p) == st]
            for pid, _ in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 2
            while alive and time.monotonic() < deadline:
                time.sleep(0.05)
                alive = [(p, st) for p, st in alive if proc_start_time(p) == st]
            if not alive:
                break
        if proc.stdout:
            proc.stdout.close()
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.items)):
            with contextlib.suppress(Exception):
                self.stop(proc)


PROCS = Procs()


def wait_line(proc: subprocess.Popen[bytes], prefix: str, timeout: float) -> str:
    """The first stdout line of a role process that starts with prefix (READY ...)."""
    assert proc.stdout is not None
    deadline, buf = time.monotonic() + timeout, b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"{proc.args!r} not ready (exit {proc.poll()}): {buf!r}")
