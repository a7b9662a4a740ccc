"""qemu-img: every argument list Sendense gives it is built here, with an explicit
image format (`-f`, never a probe of what a file says it is) and a deadline."""

from __future__ import annotations

import json
import os
import re
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sendense.common.errors import ToolFailed
from sendense.common.processes import ChildProcess, run_tool

Extent = tuple[int, int]  # [start, end) in bytes
# `qemu-img convert -p` writes "    (12.34/100%)\r".
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


@dataclass(frozen=True)
class CheckResult:
    """`qemu-img check`: 0 clean, 3 leaked clusters only (harmless, but not a finished write)."""

    returncode: int
    output: str

    @property
    def clean(self) -> bool:
        return self.returncode == 0


def data_extents(entries: list[dict[str, Any]]) -> list[Extent]:
    """`qemu-img map --output=json` entries -> the ranges that hold data, merged,
    in order (holes and zero clusters left out)."""
    merged: list[Extent] = []
    for entry in entries:
        if not entry["data"] or entry["zero"]:
            continue
        start, end = entry["start"], entry["start"] + entry["length"]
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


class QemuImg:
    # Deadlines, in seconds. Metadata calls are quick unless the storage hangs;
    # rebase and compare read whole images.
    quick_s = 120.0
    whole_image_s = 6 * 3600.0
    # convert reports progress: it fails when no report came for this long.
    stall_s = 600.0

    def __init__(self, binary: str = "qemu-img") -> None:
        self.binary = binary

    def _run(
        self, args: list[str], timeout: float, ok: tuple[int, ...] = (0,)
    ) -> tuple[int, str, str]:
        result = run_tool([self.binary, *args], timeout=timeout, ok=ok)
        return result.returncode, result.stdout, result.stderr

    def create(self, path: Path, size: int, backing: str | None = None) -> None:
        """A QCOW2 file; `backing` is the parent's path relative to `path`'s directory
        (or absolute)."""
        args = ["create", "-q", "-f", "qcow2"]
        if backing is not None:
            args += ["-F", "qcow2", "-b", backing]
        self._run([*args, str(path), str(size)], self.quick_s)

    def rebase(self, path: Path, backing: str, unsafe: bool = False) -> None:
        """Safe rebase onto `backing` (relative to `path`'s directory; "" = none): every
        cluster whose content would change is copied into `path` first. `unsafe`
        only rewrites the header's backing file name (`-u`), copying nothing."""
        args = ["rebase", "-q", "-f", "qcow2", "-b", backing]
        if backing:
            args[4:4] = ["-F", "qcow2"]
        if unsafe:
            args.insert(1, "-u")
        self._run([*args, str(path)], self.quick_s if unsafe else self.whole_image_s)

    def measure(self, path: Path) -> int:
        """Bytes a QCOW2 file needs to hold everything `path` reads through its backing
        chain (`qemu-img measure`'s "required")."""
        args = ["measure", "--output=json", "-f", "qcow2", "-O", "qcow2", str(path)]
        _, out, _ = self._run(args, self.whole_image_s)
        required: int = json.loads(out)["required"]
        return required

    def info(
        self, path: Path | str, fmt: str = "qcow2", force_share: bool = False
    ) -> dict[str, Any]:
        args = ["info", "--output=json", "-f", fmt]
        if force_share:
            args.append("-U")
        _, out, _ = self._run([*args, str(path)], self.quick_s)
        data: dict[str, Any] = json.loads(out)
        return data

    def check(self, path: Path) -> CheckResult:
        code, out, err = self._run(
            ["check", "-q", "-f", "qcow2", str(path)], self.whole_image_s, ok=(0, 2, 3)
        )
        return CheckResult(code, (out + err).strip())

    def compare(
        self, first: Path | str, second: Path | str, first_fmt: str, second_fmt: str
    ) -> bool:
        """True when the two images have the same size and read the same; raises when
        qemu-img cannot compare. (Plain `qemu-img compare` calls a shorter image equal
        to a longer one whose tail reads as zeroes.)"""
        sizes = {self.info(first, first_fmt)["virtual-size"]}
        sizes.add(self.info(second, second_fmt)["virtual-size"])
        if len(sizes) != 1:
            return False
        args = ["compare", "-q", "-f", first_fmt, "-F", second_fmt, str(first), str(second)]
        code, _, _ = self._run(args, self.whole_image_s, ok=(0, 1))
        return code == 0

    def map(self, path: Path, fmt: str = "qcow2") -> list[Extent]:
        """The ranges of the image (through its backing chain) that hold data."""
        args = ["map", "--output=json", "-f", fmt, str(path)]
        _, out, _ = self._run(args, self.whole_image_s)
        return data_extents(json.loads(out))

    def convert(
        self,
        source: Path,
        target: Path,
        output: list[str],
        progress: Callable[[float], None] | None = None,
    ) -> None:
        """`qemu-img convert -p` of a QCOW2 chain into `target` (`output`: `-O FMT`
        and its options), reporting percentages as they come; the child is stopped
        in every outcome, and when it reports nothing for `stall_s`. Nothing is
        flushed: qemu-img's default for convert is `-t unsafe`, and with
        `-t writeback` a streamOptimized VMDK is synced over and over (163
        fdatasync calls for 10 MiB of data); the caller syncs once."""
        argv = [self.binary, "convert", "-p", "-f", "qcow2", *output, str(source), str(target)]
        child = ChildProcess(argv, pipe_stdout=True)
        child.spawn()
        messages: list[bytes] = []
        try:
            fd = child.stdout.fileno()
            pending = b""
            last = time.monotonic()
            while True:
                readable, _, _ = select.select([fd], [], [], 1.0)
                if not readable:
                    if time.monotonic() - last > self.stall_s:
                        raise ToolFailed(argv, None, f"no progress for {self.stall_s:g} s")
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                last = time.monotonic()
                # Percentages end in \r, messages in \n; both may arrive cut in two.
                *done, pending = re.split(rb"[\r\n]", pending + chunk)
                for piece in done:
                    found = _PERCENT.search(piece)
                    if found and progress is not None:
                        progress(float(found.group(1)))
                    elif not found and piece.strip():
                        messages = [*messages[-19:], piece.strip()]
            if pending.strip():
                messages.append(pending.strip())
            code = child.wait()
        finally:
            child.stop()
        if code != 0:
            raise ToolFailed(argv, code, b"\n".join(messages).decode(errors="replace"))


def tls_info_command(qemu_object: str, image_opts: str, binary: str = "qemu-img") -> list[str]:
    """`qemu-img info` of an NBD export over TLS: the command line shown to a user
    who opened an access (`qemu_object` is the client's TLS credentials object)."""
    return [binary, "info", "--object", qemu_object, "--image-opts", image_opts]
