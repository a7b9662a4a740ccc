"""The one process helper: real children, started, probed, failed and stopped."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from sendense.common.errors import ToolFailed
from sendense.common.processes import ChildProcess, is_alive, processes, run_tool

PY = sys.executable


def test_a_child_is_ready_when_its_probe_says_so_and_stops(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    script = f"import pathlib, time; pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"
    child = ChildProcess([PY, "-c", script], log_path=tmp_path / "log", own_session=True)
    child.start(ready=flag.exists, timeout=10)
    assert child.running()
    assert os.getsid(child.pid) == child.pid  # its own session: a ^C to us misses it
    assert any(p.pid == child.pid and p.ppid == os.getpid() for p in processes())
    assert child.stop() == -signal.SIGTERM
    assert not is_alive(child.pid)


def test_a_child_that_exits_before_ready_fails_with_its_log(tmp_path: Path) -> None:
    script = (
        "import sys; print('first line'); "
        "print('cannot bind: in use', file=sys.stderr); sys.exit(3)"
    )
    child = ChildProcess([PY, "-c", script], log_path=tmp_path / "log")
    with pytest.raises(ToolFailed) as failed:
        child.start(ready=lambda: False, timeout=10)
    assert failed.value.returncode == 3
    assert "cannot bind: in use" in failed.value.stderr
    assert "first line" in failed.value.stderr


def test_a_child_never_ready_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    child = ChildProcess([PY, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "log")
    with pytest.raises(ToolFailed) as failed:
        child.start(ready=lambda: False, timeout=0.5)
    assert failed.value.returncode is None
    assert child.poll() is not None  # stopped, not left behind


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    child = ChildProcess([PY, "-c", script], log_path=tmp_path / "log")
    child.start(ready=lambda: "up" in (tmp_path / "log").read_text(), timeout=10)
    assert child.stop(timeout=0.5) == -signal.SIGKILL


def test_a_missing_program_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ToolFailed) as failed:
        ChildProcess(["/nonexistent/qemu-nbd"], log_path=tmp_path / "log").start()
    assert failed.value.returncode is None
    with pytest.raises(ToolFailed):
        run_tool(["/nonexistent/qemu-img", "info"], timeout=5)


def test_run_tool_has_a_deadline_and_names_the_exit_code() -> None:
    started = time.monotonic()
    with pytest.raises(ToolFailed) as slow:
        run_tool([PY, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert time.monotonic() - started < 10
    assert slow.value.returncode is None
    with pytest.raises(ToolFailed) as bad:
        run_tool([PY, "-c", "import sys; sys.exit(4)"], timeout=10)
    assert bad.value.returncode == 4
    assert run_tool([PY, "-c", "import sys; sys.exit(4)"], timeout=10, ok=None).returncode == 4
