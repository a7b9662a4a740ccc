"""qemu-img: create, inspect, check and compare images. argv lists only, never a shell."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sendense.common.errors import ToolFailed


@dataclass(frozen=True)
class CheckResult:
    """`qemu-img check`: 0 clean, 3 leaked clusters only (harmless, but not a finished write)."""

    returncode: int
    output: str

    @property
    def clean(self) -> bool:
        return self.returncode == 0


class QemuImg:
    def __init__(self, binary: str = "qemu-img") -> None:
        self.binary = binary

    def _run(self, args: list[str], ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, *args]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise ToolFailed(argv, None, f"{self.binary} is not installed") from exc
        if result.returncode not in ok:
            raise ToolFailed(argv, result.returncode, result.stderr or result.stdout)
        return result

    def create(self, path: Path, size: int, backing: str | None = None) -> None:
        """A QCOW2 file; `backing` is the parent's path relative to `path`'s directory."""
        args = ["create", "-q", "-f", "qcow2"]
        if backing is not None:
            args += ["-F", "qcow2", "-b", backing]
        self._run([*args, str(path), str(size)])

    def rebase(self, path: Path, backing: str) -> None:
        """Safe rebase onto `backing` (relative to `path`'s directory; "" = none): every
        cluster whose content would change is copied into `path` first."""
        args = ["rebase", "-q", "-f", "qcow2", "-b", backing]
        if backing:
            args[4:4] = ["-F", "qcow2"]
        self._run([*args, str(path)])

    def info(self, path: Path | str, force_share: bool = False) -> dict[str, Any]:
        args = ["info", "--output=json"]
        if force_share:
            args.append("-U")
        data: dict[str, Any] = json.loads(self._run([*args, str(path)]).stdout)
        return data

    def check(self, path: Path) -> CheckResult:
        result = self._run(["check", "-q", "-f", "qcow2", str(path)], ok=(0, 2, 3))
        return CheckResult(result.returncode, (result.stdout + result.stderr).strip())

    def compare(self, first: Path | str, second: Path | str) -> bool:
        """True when the two images read the same; raises when qemu-img cannot compare."""
        return self._run(["compare", "-q", str(first), str(second)], ok=(0, 1)).returncode == 0
