"""Every external program Sendense runs goes through here.

* `run_tool`: a short command (qemu-img, ss, sshd -t): output captured, a
  deadline, `ToolFailed` with the output's last line on a bad exit, a missing
  binary or the deadline.
* `ChildProcess`: a long-running child we own (qemu-nbd, the tunnel's sshd, the
  node's ssh, nbdkit, qemu-img convert): spawned with its output in a log file
  (or a pipe), ready when a probe says so, stopped SIGTERM -> timed wait ->
  SIGKILL; a start that fails raises `ToolFailed` with the log's tail.
* `processes()`: the one scan of /proc, for processes a crashed run left behind
  (checked by pid, start time and command line before anything is stopped).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from sendense.common.errors import ToolFailed

LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    argv: list[str]
    start_ticks: int
    ppid: int = 0


def process_info(pid: int) -> ProcessInfo | None:
    """The process's argv, start time and parent, or None when it is gone (or a zombie)."""
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
    return ProcessInfo(pid=pid, argv=argv, start_ticks=int(fields[19]), ppid=int(fields[1]))


def processes() -> Iterator[ProcessInfo]:
    """Every live process this user can see."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = process_info(int(entry.name))
            if info is not None:
                yield info


def listener_pid(host: str, port: int) -> int | None:
    """The pid of the process listening on TCP host:port (`ss`), or None."""
    out = run_tool(["ss", "-Hltnp", f"src {host} and sport = :{port}"], timeout=10, ok=None).stdout
    return _first_pid(out)


def connection_pid(host: str, port: int, peer_port: int) -> int | None:
    """The pid of the process holding the accepted end of the TCP connection from
    host:peer_port to host:port (`ss`), or None: no such connection, or one still
    waiting in the listener's queue, which no process holds yet."""
    where = f"src {host} and sport = :{port} and dport = :{peer_port}"
    out = run_tool(["ss", "-Htnp", "state", "established", where], timeout=10, ok=None).stdout
    return _first_pid(out)


def _first_pid(ss_output: str) -> int | None:
    """The first `pid=` of `ss -p`'s users:(("name",pid=N,fd=M)), or None."""
    for part in ss_output.split("pid=")[1:]:
        digits = part.split(",", 1)[0]
        if digits.isdigit():
            return int(digits)
    return None


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


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_tool(
    argv: list[str], *, timeout: float, ok: tuple[int, ...] | None = (0,)
) -> subprocess.CompletedProcess[str]:
    """Run a short command to its end. `ok`: the exit codes that are not a
    failure (None: any). Never a shell; stdin is closed."""
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise ToolFailed(argv, None, f"{argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolFailed(argv, None, f"no answer within {timeout:g} s") from exc
    if ok is not None and result.returncode not in ok:
        raise ToolFailed(argv, result.returncode, result.stderr or result.stdout)
    return result


class ChildProcess:
    """A child process we own, from start to stop.

    `log_path`: where its stdout and stderr go (appended to with `append_log`);
    without one they are discarded, or its stdout is a pipe with `pipe_stdout`.
    `own_session`: a ^C aimed at our terminal does not reach it (a server under
    a write is stopped in order, by us).
    """

    def __init__(
        self,
        argv: list[str],
        *,
        log_path: Path | None = None,
        append_log: bool = False,
        pipe_stdout: bool = False,
        own_session: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        self.append_log = append_log
        self.pipe_stdout = pipe_stdout
        self.own_session = own_session
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self._popen().pid

    @property
    def stdout(self) -> IO[bytes]:
        out = self._popen().stdout
        if out is None:
            raise RuntimeError(f"{self.argv[0]}: stdout is not a pipe")
        return out

    @property
    def started(self) -> bool:
        return self._proc is not None

    def _popen(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError(f"{self.argv[0]} is not started")
        return self._proc

    def spawn(self) -> None:
        """Start it and return at once."""
        log: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            log = self.log_path.open("ab" if self.append_log else "wb")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.pipe_stdout else log,
                stderr=subprocess.STDOUT if self.pipe_stdout or self.log_path else log,
                start_new_session=self.own_session,
                env=self.env,
            )
        except FileNotFoundError as exc:
            raise ToolFailed(self.argv, None, f"{self.argv[0]} is not installed") from exc
        finally:
            if not isinstance(log, int):
                log.close()

    def start(
        self, ready: Callable[[], bool] | None = None, timeout: float = 10.0, poll: float = 0.02
    ) -> None:
        """Spawn, then wait until `ready()` is true. It exiting first, or `timeout`
        passing, stops it and raises ToolFailed with its log's tail."""
        self.spawn()
        if ready is None:
            return
        proc = self._popen()
        deadline = time.monotonic() + timeout
        while not ready():
            code = proc.poll()
            if code is not None:
                raise ToolFailed(self.argv, code, self.log_tail())
            if time.monotonic() > deadline:
                self.stop()
                raise ToolFailed(self.argv, None, f"not ready after {timeout:g} s")
            time.sleep(poll)

    def poll(self) -> int | None:
        """Its exit code, or None while it runs."""
        return self._popen().poll()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        return self._popen().wait(timeout)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM) without waiting: safe in a signal handler."""
        if self.running():
            self._popen().terminate()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Its exit code (None: never
        started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log_path is None:
            return ""
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return ""

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
