"""File-level restore: how long a restore point takes to open and list, and a
large file's download beside the raw export of the disk that holds it, in the
same run.

    .venv/bin/python bench/file_restore.py [--file-mib 200] [--runs 3]

A disk holding a bare ext4 filesystem (made by `mke2fs -d`) with one random file
of `--file-mib` MiB is backed up into a hub (its services in this process, then
the hub as its own process for HTTP). Timed through the API with curl: opening
the point (an appliance boots: TCG here, as /dev/kvm is unusable) up to its first
listing of `/`; the file's download (`GET .../browse/download`); and the raw
download of the whole disk (`GET .../disks/2000/download?format=raw`), each after
`sync; drop_caches` when root. Median of the runs, MB = 10^6 bytes delivered.
Writes "file_restore" with the top-level `file_restore_first_listing_s` (absolute:
no peer opens a point here) and `file_restore_vs_export` (the file's MB/s over
the raw export's MB/s) to bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results import record
from tests.rig.guest_disks import data_extents
from tests.rig.hub import HubProcess
from verify import backup, bench_hub, drop_caches

MiB = 1 << 20
KEY = 2000


def make_disk(root: Path, file_mib: int) -> tuple[Path, bytes]:
    """A bare ext4 disk holding big.bin; the file's bytes."""
    tree = root / "tree"
    tree.mkdir()
    data = os.urandom(file_mib * MiB)
    (tree / "big.bin").write_bytes(data)
    disk = root / "disk.raw"
    size = (file_mib + 64) * MiB
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(disk), f"{size // 1024}k"],
        check=True,
    )
    (tree / "big.bin").unlink()
    return disk, data


def curl(server: HubProcess, header: Path, path: str, out: Path, method: str = "GET") -> int:
    argv = ["curl", "-sSf", "-X", method, "-o", str(out), "-w", "%{size_download}"]
    argv += ["-H", f"@{header}", "--cacert", str(server.cert), "--max-time", "900"]
    got = subprocess.run(
        [*argv, f"{server.url}{path}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(got.stdout)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sendense-bench-files-", dir=args.tmp) as tmp:
        root = Path(tmp)
        disk, data = make_disk(root, args.file_mib)
        hub = bench_hub(root)
        try:
            point = backup(hub, "bench-files", {KEY: disk}, {KEY: data_extents(disk)}, "full")
        finally:
            hub.close()
        disk_size = disk.stat().st_size
        disk.unlink()
        server = HubProcess(root / "hub", f"sqlite:///{root / 'hub.db'}")
        seconds: dict[str, list[float]] = {"first_listing": [], "file": [], "raw_export": []}
        try:
            server.start()
            header = root / "auth-header"
            header.write_text(f"Authorization: Bearer {server.initial_token()}\n")  # not in argv
            browse = f"/api/v1/restore-points/{point}/browse"
            out = root / "out"
            for _ in range(args.runs):
                drop_caches()
                started = time.perf_counter()
                curl(server, header, browse, out, "POST")
                curl(server, header, f"{browse}/ls?path=/", out)
                seconds["first_listing"].append(time.perf_counter() - started)
                listed = {e["name"] for e in json.loads(out.read_text())["entries"]}
                if "big.bin" not in listed:
                    raise SystemExit(f"the listing does not show big.bin: {sorted(listed)}")
                drop_caches()
                started = time.perf_counter()
                got = curl(server, header, f"{browse}/download?path=/big.bin", out)
                seconds["file"].append(time.perf_counter() - started)
                if got != len(data) or out.read_bytes() != data:
                    raise SystemExit("the downloaded file differs from the one written")
                curl(server, header, browse, out, "DELETE")
                drop_caches()
                started = time.perf_counter()
                raw = f"/api/v1/restore-points/{point}/disks/{KEY}/download?format=raw"
                got = curl(server, header, raw, Path("/dev/null"))
                seconds["raw_export"].append(time.perf_counter() - started)
                if got != disk_size:
                    raise SystemExit(f"the raw export sent {got} of {disk_size} bytes")
        finally:
            server.stop()
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    file_rate = len(data) / medians["file"] / 1e6
    export_rate = disk_size / medians["raw_export"] / 1e6
    return {
        "file_bytes": len(data),
        "disk_bytes": disk_size,
        "seconds": seconds,
        "first_listing_s": medians["first_listing"],
        "file_MBps": file_rate,
        "raw_export_MBps": export_rate,
        "file_restore_vs_export": file_rate / export_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file-mib", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmp", default=None, help="where the temporary files go")
    args = parser.parse_args()
    figures = run(args)
    print(
        f"open + first listing {figures['first_listing_s']:.1f} s; "
        f"file {figures['file_MBps']:.0f} MB/s; raw export {figures['raw_export_MBps']:.0f} "
        f"MB/s; ratio {figures['file_restore_vs_export']:.2f}"
    )
    record(
        "file_restore",
        figures,
        {
            "file_restore_first_listing_s": figures["first_listing_s"],
            "file_restore_vs_export": figures["file_restore_vs_export"],
        },
    )


if __name__ == "__main__":
    main()
