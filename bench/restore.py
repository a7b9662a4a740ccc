"""Disk export of a restore point beside `qemu-img convert` of the same chain, in the
same run, and the HTTP raw download.

    .venv/bin/python bench/restore.py [--disk-gib 2] [--runs 3]

A hub (its services in this process) holds one disk's chain: a full (half random
data, half holes in 16 MiB extents) and an incremental with 1% of the data
changed, written through the hub's own qemu-nbd exports (bench/verify.py's
`backup`). Timed, each after `sync; drop_caches` when root: `DiskConverter.export`
of the incremental to raw and to QCOW2 (synced before its rename), `qemu-img
convert -t writeback -O raw|qcow2` of the same top file (qemu-img's own way to a
synced file; plain `qemu-img convert` leaves the data in the page cache, and is
reported beside it as `*_no_sync`), and the raw download from `sendense hub serve`
as a real process (curl into /dev/null) beside the same bytes as a static file
from the same HTTP stack (bench/static_server.py): `http_raw_vs_static_file`.
Median of the runs; MB = 10^6 B of virtual size. Writes "restore" and the
top-level `restore_vs_qemu_img` (raw export rate over the synced `qemu-img
convert -O raw` rate) and `http_raw_vs_static_file` to bench/results.json.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbd_writer import make_source
from results import record
from tests.rig.hub import HubProcess
from tests.rig.net import free_port
from tests.rig.procs import stop
from verify import backup, bench_hub, change_one_percent, drop_caches

from sendense.hub.api.queries import Queries
from sendense.hub.restore.conversion import DiskConverter

MiB = 1 << 20
EXTENT = 16 * MiB
KEY = 2000


def timed(runs: int, step: Callable[[int], None]) -> list[float]:
    seconds = []
    for run in range(runs):
        drop_caches()
        started = time.perf_counter()
        step(run)
        seconds.append(time.perf_counter() - started)
    return seconds


def make_point(root: Path, size: int) -> tuple[str, Path, int]:
    """The chain on a hub in `root`; returns the top point, its file, the data bytes."""
    hub = bench_hub(root)
    try:
        sources = {KEY: root / "source.raw"}
        data = make_source(sources[KEY], size)
        full = {KEY: [(o, EXTENT) for o in range(0, size, 2 * EXTENT)]}
        backup(hub, "bench-restore", sources, full, "full")
        changed = {KEY: change_one_percent(sources[KEY], size)}
        point = backup(hub, "bench-restore", sources, changed, "auto")
        top = root / "repo" / Queries(hub.db).restore_point(point).disks[0].file_path
        sources[KEY].unlink()
    finally:
        hub.close()
    return point, top, data


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.disk_gib * 1024) * MiB
    with tempfile.TemporaryDirectory(prefix="sendense-bench-", dir=args.tmp) as tmp:
        root = Path(tmp)
        point, top, data = make_point(root, size)
        out = root / "out"
        out.mkdir()
        hub = bench_hub(root, new=False)
        try:
            exporter = DiskConverter(hub.db, hub.repos, hub.settings.scratch_dir)
            seconds: dict[str, list[float]] = {}
            for fmt in ("raw", "qcow2"):
                for name, cache in (("", ["-t", "writeback"]), ("_no_sync", [])):

                    def convert(run: int, fmt: str = fmt, cache: list[str] = cache) -> None:
                        argv = ["qemu-img", "convert", *cache, "-f", "qcow2", "-O", fmt]
                        target = out / f"qemu-img-{run}.{fmt}"
                        subprocess.run([*argv, str(top), str(target)], check=True)

                    seconds[f"qemu_img_convert_{fmt}{name}"] = timed(args.runs, convert)

                def export(run: int, fmt: str = fmt) -> None:
                    exporter.export(point, KEY, fmt, out / f"export-{run}.{fmt}")

                seconds[f"export_{fmt}"] = timed(args.runs, export)
        finally:
            hub.close()
        for run_ in range(args.runs):
            same = subprocess.run(
                [
                    "qemu-img",
                    "compare",
                    "-q",
                    str(out / f"export-{run_}.raw"),
                    str(out / f"qemu-img-{run_}.raw"),
                ],
                check=False,
            )
            if same.returncode != 0:
                raise SystemExit("the raw export differs from qemu-img convert's")
        seconds["http_download_raw"], seconds["http_static_file"] = download(
            root, point, args.runs, size, out / "export-0.raw"
        )
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    figures: dict[str, Any] = {"virtual_bytes": size, "data_bytes": data}
    for name, s in seconds.items():
        figures[name] = {
            "seconds": s,
            "median_s": medians[name],
            "virtual_MBps": size / medians[name] / 1e6,
        }
    raw = medians["qemu_img_convert_raw"]
    figures["restore_vs_qemu_img"] = raw / medians["export_raw"]
    figures["qcow2_export_vs_qemu_img"] = (
        medians["qemu_img_convert_qcow2"] / medians["export_qcow2"]
    )
    figures["http_raw_vs_qemu_img"] = raw / medians["http_download_raw"]
    figures["http_raw_vs_static_file"] = medians["http_static_file"] / medians["http_download_raw"]
    figures["http_raw_vs_qemu_img_no_sync"] = (
        medians["qemu_img_convert_raw_no_sync"] / medians["http_download_raw"]
    )
    return figures


def curl(url: str, cert: Path, size: int, header: Path | None = None) -> None:
    """GET into /dev/null, checking the size (the auth header from a file: not in argv)."""
    auth = ["-H", f"@{header}"] if header is not None else []
    argv = ["curl", "-sSf", "-o", "/dev/null", "-w", "%{size_download}", *auth]
    got = subprocess.run(
        [*argv, "--cacert", str(cert), url],
        check=True,
        capture_output=True,
        text=True,
    )
    if int(got.stdout) != size:
        raise SystemExit(f"downloaded {got.stdout} bytes of {size}")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the static file server did not listen on {port}") from None
            time.sleep(0.1)


def download(
    root: Path, point: str, runs: int, size: int, raw_file: Path
) -> tuple[list[float], list[float]]:
    """The raw download from the hub as its own process, and the same bytes as a
    static file from the same HTTP stack (bench/static_server.py, the hub's
    certificate), by the same client, each run after the caches are dropped."""
    server = HubProcess(root / "hub", f"sqlite:///{root / 'hub.db'}")
    static: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        header = root / "auth-header"
        header.write_text(f"Authorization: Bearer {server.initial_token()}\n")
        url = f"{server.url}/api/v1/restore-points/{point}/disks/{KEY}/download?format=raw"
        port = free_port()
        key = server.cert.with_suffix(".key")
        script = Path(__file__).with_name("static_server.py")
        argv = [sys.executable, str(script), str(raw_file), str(port), str(server.cert), str(key)]
        static = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(port, static)
        static_url = f"https://127.0.0.1:{port}/file"
        hub_s, static_s = [], []
        for _ in range(runs):
            hub_s += timed(1, lambda _run: curl(url, server.cert, size, header))
            static_s += timed(1, lambda _run: curl(static_url, server.cert, size))
        return hub_s, static_s
    finally:
        if static is not None:
            stop(static)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-gib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmp", default=None, help="where the temporary files go")
    args = parser.parse_args()
    figures = run(args)
    print(f"{'scenario':<32}{'seconds':>10}{'MB/s virtual':>14}")
    for name, f in figures.items():
        if isinstance(f, dict):
            print(f"{name:<32}{f['median_s']:>10.2f}{f['virtual_MBps']:>14.0f}")
    for name, f in figures.items():
        if name.endswith(("_vs_qemu_img", "_no_sync", "_file")) and not isinstance(f, dict):
            print(f"{name:<32}{f:>10.3f}")
    ratios = ("restore_vs_qemu_img", "http_raw_vs_static_file")
    record("restore", figures, {key: figures[key] for key in ratios})


if __name__ == "__main__":
    main()
