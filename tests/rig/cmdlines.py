"""Every process's command line, sampled while a test runs: argv is readable by
every local user (/proc/PID/cmdline), so no secret may ever be passed there."""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType


def command_lines() -> set[bytes]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.add((entry / "cmdline").read_bytes().replace(b"\0", b" ").strip())
            except OSError:
                continue
    return found


class CmdlineSampler:
    """`with CmdlineSampler() as seen:` reads every /proc/*/cmdline every
    `interval` seconds until the block ends; `seen.lines` holds each distinct one."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lines: set[bytes] = set()
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.lines |= command_lines()
            self.rounds += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> CmdlineSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def containing(self, secret: str) -> list[str]:
        return [line.decode(errors="replace") for line in self.lines if secret.encode() in line]

    def seen(self, fragment: str) -> bool:
        return any(fragment.encode() in line for line in self.lines)
