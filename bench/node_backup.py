"""Benchmark the node's backup path against nbdcopy, in the same run.

    .venv/bin/python bench/node_backup.py [--disk-gib 2] [--runs 3]

A simulated vCenter (tests/rig/vcsim.py) holds a VM with two disks, each half
random data and half holes in alternating 16 MiB extents. The node's job runner
(no HTTP in between) backs it up into the hub's qemu-nbd exports, reading over
the datastore's HTTPS /folder access with Range requests. The baseline is
`nbdcopy` reading the same datastore URLs over HTTPS (nbdkit's curl plugin) into
the same kind of export, both disks at once as the node does; nbdcopy from the
local -flat.vmdk files (no TLS, a path no real node has) is reported beside it.
The node's reader alone, fetching the same areas to nowhere (bench/read_only.py),
is timed after each full: `full_vs_read_only`. Then: incrementals, each after
another 1% of the data changed, and a 90%-holes disk. Median of the runs; MB =
10^6 B of virtual size. Figures go to bench/results.json under "node_backup",
ratios at top level.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr
from read_only import read_only
from results import record
from tests.rig.vcsim import Vcsim, running_vcsim
from tests.rig.vmware_vms import SCSI0, create_vm, fill, flat_file

from sendense.common.config import load_settings
from sendense.common.contract import BackupStartRequest, NodeJobStatus
from sendense.hub.backup.disks import DiskResult, DiskSpec, PreparedJob
from sendense.hub.config import HubSettings
from sendense.hub.service import Hub
from sendense.node.backup_tasks import BackupTasks
from sendense.node.config import NodeSettings

MiB = 1 << 20
EXTENT = 16 * MiB
NBDCOPY = ["nbdcopy", f"--request-size={4 * MiB}", "-R", "8", f"--queue-size={64 * MiB}", "--flush"]


# Guest writes go through the rig's fill(), which journals them: the
# simulator's CBT then digests what changed at a snapshot, not the whole disk.


def fill_half(path: Path, size: int, pool: bytes) -> int:
    """Alternating 16 MiB extents of data and holes; returns the data bytes."""
    view = memoryview(pool)
    writes = [
        (offset + i, view[: min(len(pool), EXTENT - i)])
        for offset in range(0, size, 2 * EXTENT)
        for i in range(0, EXTENT, len(pool))
    ]
    fill(path, writes)
    return sum(len(data) for _, data in writes)


def fill_sparse(path: Path, size: int, pool: bytes) -> int:
    """10% data: 1 MiB of every 10 MiB."""
    writes = [(offset, memoryview(pool)[:MiB]) for offset in range(0, size, 10 * MiB)]
    fill(path, writes)
    return sum(len(data) for _, data in writes)


def change_one_percent(path: Path, size: int) -> int:
    """Overwrite 64 KiB in every 6.4 MiB of the data extents: 1% of the data."""
    block = os.urandom(64 * 1024)
    writes = [
        (offset, block)
        for extent in range(0, size, 2 * EXTENT)
        for offset in range(extent, extent + EXTENT, 100 * 64 * 1024 // 16 * 16)
    ]
    fill(path, writes)
    return len(writes) * len(block)


async def node_backup(
    runner: BackupTasks, vc: Vcsim, vm_name: str, prepared: PreparedJob, previous: dict[int, str]
) -> tuple[float, NodeJobStatus]:
    incremental = any(d.backup_type == "incremental" for d in prepared.disks)
    req = BackupStartRequest(
        job_id=prepared.job_id,
        vm_name=vm_name,
        vcenter_host=vc.host,
        vcenter_user=vc.username,
        vcenter_password=SecretStr(vc.password),
        vcenter_thumbprint=vc.thumbprint,
        nbd_targets=prepared.nbd_targets,
        backup_type="incremental" if incremental else "full",
        previous_change_ids={str(k): v for k, v in previous.items()},
    )
    started = time.perf_counter()
    job = runner.start(req)
    assert job.task is not None
    await job.task
    return time.perf_counter() - started, job.status


def finish(hub: Hub, prepared: PreparedJob, status: NodeJobStatus) -> dict[int, str]:
    if status.state != "complete":
        hub.ledger.fail(prepared.job_id, status.error or status.state)
        raise SystemExit(f"node job {status.state}: {status.error}")
    hub.ledger.finish(
        prepared.job_id,
        {d.disk_key: DiskResult(d.change_id, d.bytes_written, d.checksum) for d in status.disks},
    )
    return {d.disk_key: d.change_id for d in status.disks if d.change_id}


def datastore_url(vc: Vcsim, source: Path) -> str:
    relative = source.relative_to(vc.datastore_dir()).as_posix()
    return f"https://{vc.host}/folder/{relative}?dcPath=DC0&dsName=LocalDS_0"


def nbdcopy_both(
    hub: Hub, vm_name: str, disks: list[DiskSpec], sources: dict[int, str], via_https: bool
) -> float:
    """nbdcopy of both disks at once, from the local files or, like the node, from the
    datastore over HTTPS (nbdkit's curl plugin), into the same kind of exports."""
    prepared = hub.ledger.prepare(vm_name, disks, "full")
    started = time.perf_counter()
    procs = []
    for d in prepared.disks:
        uri = hub.exports.uri(d.target.port, d.target.export)  # the export's socket
        if via_https:
            argv = [
                "nbdkit",
                "-U",
                "-",
                "--exit-with-parent",
                "curl",
                f"url={sources[d.key]}",
                "sslverify=false",
                "--run",
                f"{' '.join(NBDCOPY)} \"$uri\" '{uri}'",
            ]
        else:
            argv = [*NBDCOPY, sources[d.key], uri]
        procs.append(subprocess.Popen(argv))
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - started
    hub.ledger.fail(prepared.job_id, "baseline run: not a backup")
    if any(codes):
        raise SystemExit(f"nbdcopy failed: {codes}")
    return elapsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.disk_gib * 1024) * MiB
    pool = os.urandom(16 * MiB)
    with tempfile.TemporaryDirectory(prefix="sendense-bench-", dir=args.tmp) as tmp:
        root = Path(tmp)
        (root / "repo").mkdir()
        hub = Hub.open(
            load_settings(
                HubSettings, data_dir=root / "hub", min_free_bytes=0, repository_roots=[root]
            )
        )
        hub.repos.add(str(root / "repo"))
        # The node writes the hub's sockets directly, as nbdcopy does: no tunnel here.
        exports = hub.exports.settings.socket_root
        node = load_settings(NodeSettings, data_dir=root / "node", hub_export_dir=exports)
        runner = BackupTasks(node)
        try:
            with running_vcsim(root / "vcsim") as vc, vc.session() as si:
                return asyncio.run(scenarios(args, size, pool, hub, runner, vc, si))
        finally:
            hub.reconcile("bench ended")
            hub.close()


async def scenarios(
    args: argparse.Namespace,
    size: int,
    pool: bytes,
    hub: Hub,
    runner: BackupTasks,
    vc: Vcsim,
    si: Any,
) -> dict[str, Any]:
    disks = [DiskSpec(2000, size), DiskSpec(2001, size)]
    vm = create_vm(si, "bench", [(d.key, size, SCSI0) for d in disks], cbt=True)
    sources = {d.key: flat_file(vc, vm, d.key) for d in disks}
    data = sum(fill_half(p, size, pool) for p in sources.values())
    virtual = size * len(disks)

    full_times, baseline_times, local_times, read_times = [], [], [], []
    previous: dict[int, str] = {}
    urls = {k: datastore_url(vc, p) for k, p in sources.items()}
    files = {k: str(p) for k, p in sources.items()}
    for _ in range(args.runs):
        baseline_times.append(
            await asyncio.to_thread(nbdcopy_both, hub, "bench-base", disks, urls, True)
        )
        local_times.append(
            await asyncio.to_thread(nbdcopy_both, hub, "bench-base", disks, files, False)
        )
        prepared = hub.ledger.prepare("bench", disks, "full")
        elapsed, status = await node_backup(runner, vc, "bench", prepared, {})
        previous = finish(hub, prepared, status)
        full_times.append(elapsed)
        areas = {d.disk_key: list(d.areas or []) for d in status.disks}
        read_s, read_bytes = await read_only(vc, vm, areas, runner.tuning)
        read_times.append(read_s)
    full_s, base_s = statistics.median(full_times), statistics.median(baseline_times)
    read_s = statistics.median(read_times)
    local_s = statistics.median(local_times)

    # As many incrementals as fulls, each after another 1% changed: one sample
    # of a ~0.3 s job on a shared machine says little.
    inc_times, changed, inc_written = [], 0, 0
    for _ in range(args.runs):
        changed = sum(change_one_percent(p, size) for p in sources.values())
        prepared = hub.ledger.prepare("bench", disks, "auto")
        elapsed, inc_status = await node_backup(runner, vc, "bench", prepared, previous)
        previous = finish(hub, prepared, inc_status)
        inc_times.append(elapsed)
        inc_written = sum(d.bytes_written for d in inc_status.disks)
    inc_s = statistics.median(inc_times)

    sparse_vm = create_vm(si, "bench-sparse", [(2000, size, SCSI0)], cbt=True)
    sparse_data = fill_sparse(flat_file(vc, sparse_vm, 2000), size, pool)
    prepared = hub.ledger.prepare("bench-sparse", [DiskSpec(2000, size)], "full")
    sparse_s, sparse_status = await node_backup(runner, vc, "bench-sparse", prepared, {})
    finish(hub, prepared, sparse_status)
    sparse_sent = sum(d.bytes_written for d in sparse_status.disks)

    return {
        "virtual_bytes": virtual,
        "data_bytes": data,
        "runs": args.runs,
        "full": {"seconds": full_times, "median_s": full_s, "virtual_MBps": virtual / full_s / 1e6},
        "nbdcopy": {
            "source": "the same datastore URL over HTTPS (nbdkit curl plugin), as the node reads",
            "seconds": baseline_times,
            "median_s": base_s,
            "virtual_MBps": virtual / base_s / 1e6,
        },
        "incremental_1pct": {
            "seconds": inc_times,
            "median_s": inc_s,
            "changed_bytes": changed,
            "data_bytes_sent": inc_written,
        },
        "sparse_90pct_holes": {
            "seconds": sparse_s,
            "data_bytes": sparse_data,
            "data_bytes_sent": sparse_sent,
        },
        "nbdcopy_local_file": {
            "source": "the -flat.vmdk read locally: a path no real node has (no TLS, no HTTP)",
            "seconds": local_times,
            "median_s": local_s,
            "virtual_MBps": virtual / local_s / 1e6,
        },
        "read_only": {
            "source": "the node's reader, same tuning and areas, to nowhere (bench/read_only.py)",
            "seconds": read_times,
            "median_s": read_s,
            "bytes_read": read_bytes,
        },
        "full_vs_read_only": read_s / full_s,
        "full_vs_nbdcopy": base_s / full_s,
        "full_vs_nbdcopy_local_file": local_s / full_s,
        "incremental_1pct_time_vs_full": inc_s / full_s,
        "sparse_data_sent_vs_data": sparse_sent / sparse_data,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-gib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmp", default=None, help="where the temporary files go")
    parser.add_argument("--verbose", action="store_true", help="log each job's steps")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    figures = run(args)
    print(f"{'scenario':<28}{'seconds':>10}{'MB/s virtual':>15}")
    print(
        f"{'nbdcopy (baseline)':<28}{figures['nbdcopy']['median_s']:>10.2f}"
        f"{figures['nbdcopy']['virtual_MBps']:>15.0f}"
    )
    print(
        f"{'node full backup':<28}{figures['full']['median_s']:>10.2f}"
        f"{figures['full']['virtual_MBps']:>15.0f}"
    )
    print(f"{'node incremental (1%)':<28}{figures['incremental_1pct']['median_s']:>10.2f}")
    for key in (
        "full_vs_read_only",
        "full_vs_nbdcopy",
        "full_vs_nbdcopy_local_file",
        "incremental_1pct_time_vs_full",
        "sparse_data_sent_vs_data",
    ):
        print(f"{key:<40}{figures[key]:.3f}")
    keys = (
        "full_vs_read_only",
        "full_vs_nbdcopy",
        "full_vs_nbdcopy_local_file",
        "incremental_1pct_time_vs_full",
        "sparse_data_sent_vs_data",
    )
    record("node_backup", figures, {key: figures[key] for key in keys})


if __name__ == "__main__":
    main()
