"""Restore-point verification beside `qemu-img compare`, in the same run.

    .venv/bin/python bench/verify.py [--disk-gib 2] [--runs 3]

A hub (its services in this process) holds a chain per disk: a full of two disks
(half random data, half holes in 16 MiB extents) and an incremental with 1% of the
data changed, written through the hub's own qemu-nbd exports with the node's
NbdWriter and hashed the way the node hashes (BLAKE3 blocks over the areas read).
Timed: `Verifier.verify` of the incremental restore point (qemu-img check and the
checksum of every layer of both chains, read back through read-only qemu-nbd),
and `qemu-img compare` of each disk's raw source with the point's top file (both
disks at once, as the verifier checks both). Both read through the same chains
from the same page cache state (each run starts after `sync; drop_caches` when
root). Writes "verify" and the top-level `verify_vs_qemu_img_compare` (rate/rate
over the same restore point) to bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbd_writer import make_source
from results import record

from sendense.common.checksum import BlockHasher, block_digest, blocks
from sendense.common.config import load_settings
from sendense.hub.api.queries import Queries
from sendense.hub.backup.disks import DiskResult, DiskSpec
from sendense.hub.config import HubSettings
from sendense.hub.service import Hub
from sendense.hub.verify.verifier import Verifier
from sendense.nbd.writer import NbdWriter

MiB = 1 << 20
EXTENT = 16 * MiB
BLOCK = 4 * MiB


async def write_areas(uri: str, source: Path, areas: list[tuple[int, int]]) -> str:
    hasher = BlockHasher()
    zero = bytes(BLOCK)
    async with NbdWriter(uri, max_in_flight=8, request_size=BLOCK) as writer:
        with source.open("rb") as src:
            for offset, length in blocks(areas, BLOCK):
                src.seek(offset)
                data = src.read(length)
                hasher.add(offset, length, block_digest(data, zero))
                await writer.write(offset, data)
        await writer.flush()
    return hasher.hexdigest()


def bench_hub(root: Path, new: bool = True) -> Hub:
    """A hub whose data directory, SQLite database and one repository (`root/repo`)
    are under `root`: made and added when `new`, else the ones made before."""
    (root / "repo").mkdir(parents=True, exist_ok=True)
    hub = Hub.open(
        load_settings(
            HubSettings,
            data_dir=root / "hub",
            min_free_bytes=0,
            database_url=f"sqlite:///{root / 'hub.db'}",
            repository_roots=[root],
        )
    )
    if new:
        hub.repos.add(str(root / "repo"))
    return hub


def backup(
    hub: Hub, vm: str, sources: dict[int, Path], areas: dict[int, list[tuple[int, int]]], kind: str
) -> str:
    size = sources[2000].stat().st_size
    prepared = hub.ledger.prepare(vm, [DiskSpec(k, size) for k in sources], kind)
    results = {}
    for disk in prepared.disks:
        uri = hub.exports.uri(disk.target.port, disk.target.export)
        checksum = asyncio.run(write_areas(uri, sources[disk.key], areas[disk.key]))
        results[disk.key] = DiskResult(
            f"cid-{kind}", None, checksum, areas=areas[disk.key], checksum_block=BLOCK
        )
    return hub.ledger.finish(prepared.job_id, results)


def change_one_percent(path: Path, size: int) -> list[tuple[int, int]]:
    changed = []
    block = os.urandom(64 * 1024)
    with path.open("r+b") as handle:
        for extent in range(0, size, 2 * EXTENT):
            for offset in range(extent, extent + EXTENT, 100 * 64 * 1024):
                handle.seek(offset)
                handle.write(block)
                changed.append((offset, len(block)))
    return changed


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    if os.geteuid() == 0:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.disk_gib * 1024) * MiB
    with tempfile.TemporaryDirectory(prefix="sendense-bench-", dir=args.tmp) as tmp:
        root = Path(tmp)
        (root / "repo").mkdir()
        hub = Hub.open(
            load_settings(
                HubSettings, data_dir=root / "hub", min_free_bytes=0, repository_roots=[root]
            )
        )
        try:
            hub.repos.add(str(root / "repo"))
            sources = {k: root / f"source-{k}.raw" for k in (2000, 2001)}
            data = sum(make_source(p, size) for p in sources.values())
            full = {k: [(o, EXTENT) for o in range(0, size, 2 * EXTENT)] for k in sources}
            backup(hub, "bench-verify", sources, full, "full")
            changed = {k: change_one_percent(p, size) for k, p in sources.items()}
            point = backup(hub, "bench-verify", sources, changed, "auto")
            top = {
                d.disk_key: root / "repo" / d.file_path
                for d in Queries(hub.db).restore_point(point).disks
            }
            verifier = Verifier(hub.db, hub.repos, hub.settings.scratch_dir)
            verify_s, compare_s = [], []
            for _ in range(args.runs):
                drop_caches()
                started = time.perf_counter()
                verdicts = verifier.verify([point])
                verify_s.append(time.perf_counter() - started)
                if not all(v.valid for v in verdicts):
                    raise SystemExit(f"verification failed: {verdicts}")
                drop_caches()
                started = time.perf_counter()
                compare = ["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2"]
                procs = [
                    subprocess.Popen([*compare, str(sources[k]), str(top[k])]) for k in sources
                ]
                if any(p.wait() for p in procs):
                    raise SystemExit("qemu-img compare found a difference")
                compare_s.append(time.perf_counter() - started)
        finally:
            hub.reconcile("bench ended")
            hub.close()
    v, c = statistics.median(verify_s), statistics.median(compare_s)
    virtual = 2 * size
    return {
        "virtual_bytes": virtual,
        "data_bytes": data,
        "verify": {"seconds": verify_s, "median_s": v, "data_MBps": data / v / 1e6},
        "qemu_img_compare": {"seconds": compare_s, "median_s": c, "data_MBps": data / c / 1e6},
        "verify_vs_qemu_img_compare": c / v,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-gib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmp", default=None, help="where the temporary files go")
    args = parser.parse_args()
    figures = run(args)
    print(f"{'scenario':<30}{'seconds':>10}{'MB/s data':>12}")
    for name in ("verify", "qemu_img_compare"):
        print(f"{name:<30}{figures[name]['median_s']:>10.2f}{figures[name]['data_MBps']:>12.0f}")
    print(f"{'verify_vs_qemu_img_compare':<40}{figures['verify_vs_qemu_img_compare']:.3f}")
    ratio = figures["verify_vs_qemu_img_compare"]
    record("verify", figures, {"verify_vs_qemu_img_compare": ratio})


if __name__ == "__main__":
    main()
