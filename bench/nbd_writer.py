"""Benchmark the node's NBD data path: asyncio NbdWriter vs libnbd aio vs nbdcopy.

    .venv/bin/python bench/nbd_writer.py [--size-gib N] [--runs 3]

Source: a sparse raw file, half random data and half holes, in alternating
16 MiB extents. Target: a fresh QCOW2 per run, served by
`qemu-nbd --shared=10 --persistent --cache=none -f qcow2` on 127.0.0.1. The
Python writers find the source's holes as nbdcopy does (SEEK_DATA / SEEK_HOLE),
read its data in 4 MiB reads and send the holes as WRITE_ZEROES, as nbdcopy
does; the node likewise reads only a disk's allocated areas. Every run ends
with a flush. Median of the runs; MB = 10^6 B.
A second phase sends one in-memory buffer into `nbdkit null` to compare the
two Python clients without the disk. Results go to bench/results.json under the key "nbd_writer".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from libnbd_writer import LibnbdWriter
from results import record

from sendense.nbd.qemu_img import QemuImg
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd, probe
from sendense.nbd.writer import NbdWriter, WriteStats

EXTENT = 16 << 20
READ_SIZE = 4 << 20
# nbdcopy 1.14 takes plain byte counts (no 4M suffix).
NBDCOPY = ["nbdcopy", f"--request-size={4 << 20}", "-R", "8", f"--queue-size={64 << 20}", "--flush"]


class Writer(Protocol):
    stats: WriteStats

    async def write(self, offset: int, data: bytes) -> None: ...
    async def zero(self, offset: int, length: int) -> None: ...
    async def flush(self) -> None: ...


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_source(path: Path, size: int) -> int:
    """Even extents random, odd extents holes; returns the bytes of data."""
    data = 0
    with path.open("wb") as out:
        out.truncate(size)
        for offset in range(0, size, 2 * EXTENT):
            n = min(EXTENT, size - offset)
            out.seek(offset)
            out.write(os.urandom(n))
            data += n
        os.fsync(out.fileno())  # its writeback must not compete with the first run
    with path.open("rb", buffering=0) as src:  # one untimed pass: the first run pays no extra
        while src.read(READ_SIZE):
            pass
    return data


def extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is data) of the file's data and holes, as nbdcopy finds
    them (SEEK_DATA / SEEK_HOLE)."""
    offset = 0
    while offset < size:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: a hole to the end
            data = size
        if data > offset:
            yield offset, data - offset, False
        if data >= size:
            return
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        yield data, hole - data, True
        offset = hole


async def feed(writer: Writer, source: Path) -> None:
    """The source's data in 4 MiB reads, its holes as zero requests: what the
    node sends (it reads only a disk's allocated areas) and what nbdcopy sends."""
    with source.open("rb", buffering=0) as src:
        size = os.fstat(src.fileno()).st_size
        for start, length, is_data in extents(src.fileno(), size):
            if not is_data:
                await writer.zero(start, length)
                continue
            for offset in range(start, start + length, READ_SIZE):
                chunk = os.pread(src.fileno(), min(READ_SIZE, start + length - offset), offset)
                await writer.write(offset, chunk)
    await writer.flush()


async def run_asyncio(uri: str, source: Path) -> WriteStats:
    async with NbdWriter(uri, max_in_flight=8, request_size=4 << 20) as writer:
        await feed(writer, source)
    return writer.stats


async def run_libnbd(uri: str, source: Path) -> WriteStats:
    async with LibnbdWriter(uri, max_in_flight=8, request_size=4 << 20) as writer:
        await feed(writer, source)
    return writer.stats


def run_nbdcopy(uri: str, source: Path) -> None:
    subprocess.run([*NBDCOPY, str(source), uri], check=True)


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def one_run(
    name: str, source: Path, size: int, work: Path, verify: bool
) -> tuple[float, float, WriteStats | None]:
    """Wall seconds, client CPU seconds (the writer and its producer, or nbdcopy), stats."""
    target = work / f"{name}.qcow2"
    os.sync()  # the previous run's writeback and unlink settle outside the timing
    QemuImg().create(target, size)
    port = free_port()
    uri = f"nbd://127.0.0.1:{port}/bench"
    stats: WriteStats | None = None
    try:
        with QemuNbd(ExportSpec(target, port, "bench"), log_path=work / f"{name}.log"):
            who = resource.RUSAGE_CHILDREN if name == "nbdcopy" else resource.RUSAGE_SELF
            cpu, start = cpu_seconds(who), time.perf_counter()
            if name == "nbdcopy":
                run_nbdcopy(uri, source)
            else:
                runner = run_asyncio if name == "asyncio" else run_libnbd
                stats = asyncio.run(runner(uri, source))
            elapsed, cpu = time.perf_counter() - start, cpu_seconds(who) - cpu
        if verify and not QemuImg().compare(source, target, "raw", "qcow2"):
            raise SystemExit(f"{name}: the target differs from the source")
    finally:
        target.unlink(missing_ok=True)
    return elapsed, cpu, stats


async def blast(name: str, uri: str, size: int, data: bytes) -> None:
    """Protocol only: one in-memory buffer, again and again, no file reads."""
    cls = NbdWriter if name == "asyncio" else LibnbdWriter
    async with cls(uri, max_in_flight=8, request_size=len(data)) as writer:
        for offset in range(0, size, len(data)):
            await writer.write(offset, data)
        await writer.flush()


def protocol_only(size: int, runs: int) -> dict[str, int]:
    """Both Python writers into `nbdkit null`: the client's own cost, no disk in the way."""
    port = free_port()
    argv = ["nbdkit", "-f", "-p", str(port), "-i", "127.0.0.1", "null", str(size)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = os.urandom(READ_SIZE)
    times: dict[str, list[float]] = {"asyncio": [], "libnbd": []}
    try:
        deadline = time.monotonic() + 10
        while not probe("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        for run in range(runs):
            for name in ("asyncio", "libnbd")[:: 1 if run % 2 else -1]:
                start = time.perf_counter()
                asyncio.run(blast(name, f"nbd://127.0.0.1:{port}/", size, data))
                times[name].append(time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait()
    return {name: round(size / statistics.median(secs) / 1e6) for name, secs in times.items()}


def version(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory parent")
    args = parser.parse_args(argv)
    size = int(args.size_gib * (1 << 30)) // EXTENT * EXTENT
    names = ["asyncio", "libnbd", "nbdcopy"]
    times: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    stats: dict[str, WriteStats] = {}
    work = Path(tempfile.mkdtemp(prefix="sendense-nbdwriter-bench-", dir=args.dir))
    try:
        source = work / "source.raw"
        data_bytes = make_source(source, size)
        for run in range(args.runs):
            # Interleaved and rotated: drift, and whatever the previous run left
            # behind (writeback, a freed 2 GiB file), hits every writer alike.
            for name in names[run % 3 :] + names[: run % 3]:
                elapsed, cpu, st = one_run(name, source, size, work, verify=run == 0)
                times[name].append(elapsed)
                cpus[name].append(cpu)
                if st is not None:
                    stats[name] = st
                print(f"run {run + 1} {name:8} {elapsed:6.2f} s, cpu {cpu:5.2f} s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = summarize(times, cpus, stats, size, data_bytes, args.runs)
    report["protocol_only_MBps"] = protocol_only(size, args.runs)
    print_table(report)
    save(report)
    return 0


def summarize(
    times: dict[str, list[float]],
    cpus: dict[str, list[float]],
    stats: dict[str, WriteStats],
    size: int,
    data_bytes: int,
    runs: int,
) -> dict[str, Any]:
    writers: dict[str, Any] = {}
    for name, secs in times.items():
        median = statistics.median(secs)
        entry: dict[str, Any] = {
            "seconds": [round(s, 3) for s in secs],
            "median_s": round(median, 3),
            "virtual_MBps": round(size / median / 1e6),
            "data_MBps": round(data_bytes / median / 1e6),
            "client_cpu_s": round(statistics.median(cpus[name]), 2),
        }
        if name in stats:
            entry["requests"] = stats[name].requests
            entry["data_bytes_sent"] = stats[name].data_bytes
            entry["zero_bytes_sent"] = stats[name].zero_bytes
        writers[name] = entry
    fastest: Callable[[str], float] = lambda n: writers[n]["virtual_MBps"]  # noqa: E731
    faster_python = max(["asyncio", "libnbd"], key=fastest)
    return {
        "writer_vs_nbdcopy": round(fastest("asyncio") / fastest("nbdcopy"), 3),
        "kept": "asyncio",
        "faster_python": faster_python,
        "size_bytes": size,
        "data_bytes": data_bytes,
        "layout": f"alternating {EXTENT >> 20} MiB extents: random data, hole",
        "runs": runs,
        "settings": "8 x 4 MiB in flight; qemu-nbd --shared=10 --persistent --cache=none",
        "nbdcopy_argv": NBDCOPY,
        "writers": writers,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "qemu_nbd": version(["qemu-nbd", "--version"]),
            "nbdcopy": version(["nbdcopy", "--version"]),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{'writer':10} {'median s':>9} {'virtual MB/s':>13} {'data MB/s':>10} {'cpu s':>6}")
    for name, e in report["writers"].items():
        print(
            f"{name:10} {e['median_s']:9.2f} {e['virtual_MBps']:13} {e['data_MBps']:10}"
            f" {e['client_cpu_s']:6.2f}"
        )
    print(f"NbdWriter (asyncio) vs nbdcopy: {report['writer_vs_nbdcopy']:.2f}")
    proto = report["protocol_only_MBps"]
    print(
        f"protocol only (nbdkit null), MB/s: asyncio {proto['asyncio']}, libnbd {proto['libnbd']}"
    )


def save(report: dict[str, Any]) -> None:
    record("nbd_writer", report)


if __name__ == "__main__":
    sys.exit(main())
