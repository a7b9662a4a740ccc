"""Many VMs in one window: the whole NBD port pool at once, and the node's memory.

    .venv/bin/python bench/many_vms.py [--vms 50] [--disk-mib 256] [--few 5]

Real processes (vcsim, the hub with its sshd, one enrolled node and its tunnel):
`--vms` VMs of two disks each (half random data, half holes, alternating 16
MiB extents). The hub may run them all at once (max_jobs, per node, per
repository = the VM count; the node's max_jobs too), the node keeps its default
memory budget (1 GiB): the streams beyond it wait for room.

Rounds, each a full backup of `n` VMs requested at once, timed from the first
request until every job reads complete: `--few` VMs (2 x few streams), all
`--vms` (2 x vms streams: 100 with the defaults, the NBD pool), `--few` again.
MB/s is the virtual bytes of the round over its wall time (MB = 10^6 B).

* `vms50_total_mb_s`: the many-VM round's MB/s.
* `streams100_vs_streams10_throughput`: that MB/s over the mean of the two
  few-VM rounds' (same run).
* `node_rss_mib_100_streams`: the node serve process's peak resident memory
  (VmHWM) after the many-VM round; the budget is 1024 MiB.
Also the longest a VM waited between its request and its start (fairness).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node_backup import MiB, fill_half
from results import record
from tests.rig.net import free_port_range
from tests.rig.procs import kill_all, pids_with, wait_gone
from tests.rig.site import Site
from tests.rig.vcsim import running_vcsim
from tests.rig.vmware_vms import SCSI0, create_vm, flat_file

DISKS = (2000, 2001)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmHWM for pid {pid}")


def full_backups(site: Site, names: list[str]) -> list[str]:
    """Full backups of `names` requested at once: their task ids."""
    ids = []
    for name in names:
        queued = site.api.post("/api/v1/backups", json={"vm": name, "type": "full"})
        if queued.status_code != 202:
            raise SystemExit(f"the hub refused the backup of {name}: {queued.text}")
        ids.append(queued.json()["job_id"])
    return ids


def wait_complete(site: Site, job_id: str, timeout: float = 1800.0) -> None:
    job = site.wait_job(job_id, timeout=max(timeout, 1.0))
    if job["state"] != "complete":
        raise SystemExit(f"job {job_id} {job['state']}: {job['error']}")


def backup_round(site: Site, names: list[str], timeout: float = 1800.0) -> dict[str, Any]:
    """Full backups of `names` requested at once: wall seconds, longest wait."""
    started = time.perf_counter()
    ids = full_backups(site, names)
    waits = []
    for job_id in ids:
        wait_complete(site, job_id, timeout - (time.perf_counter() - started))
    seconds = time.perf_counter() - started
    for job_id in ids:
        task = site.api.get(f"/api/v1/tasks/{job_id}").json()
        created = datetime.fromisoformat(task["created_at"])
        waits.append((datetime.fromisoformat(task["started_at"]) - created).total_seconds())
    return {"vms": len(names), "seconds": seconds, "longest_wait_s": max(waits)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.disk_mib * MiB
    pool = os.urandom(16 * MiB)
    limits = str(args.vms)
    first, last = free_port_range(len(DISKS) * args.vms + 1)  # the pool, as 10100-10200
    hub = {
        "max_jobs": limits,
        "max_jobs_per_node": limits,
        "max_jobs_per_repository": limits,
        "nbd_port_min": str(first),
        "nbd_port_max": str(last),
    }
    with tempfile.TemporaryDirectory(prefix="sendense-bench-many-", dir=args.tmp) as tmp:
        root = Path(tmp)
        with running_vcsim(root / "vcsim") as vc, vc.session() as si:
            names = [f"many-{i:03d}" for i in range(args.vms)]
            data = 0
            for name in names:
                vm = create_vm(si, name, [(k, size, SCSI0) for k in DISKS], cbt=True)
                data += sum(fill_half(flat_file(vc, vm, k), size, pool) for k in DISKS)
            site = Site(root / "site", hub, max_jobs=limits)
            try:
                site.start()
                site.prepare(vc, root / "site" / "repo")
                assert site.node.serve is not None
                backup_round(site, names[:1])  # warm-up: first login, first export
                rounds = []
                for n in (args.few, args.vms, args.few):
                    done = backup_round(site, names[:n])
                    done["MBps"] = n * len(DISKS) * size / done["seconds"] / 1e6
                    if n == args.vms:
                        done["node_peak_rss_mib"] = peak_rss_mib(site.node.serve.pid)
                    rounds.append(done)
                    print(
                        f"{n:>4} VMs {2 * n:>4} streams {done['seconds']:>8.1f} s "
                        f"{done['MBps']:>8.0f} MB/s  longest wait {done['longest_wait_s']:.1f} s"
                    )
            finally:
                site.stop()
                left = wait_gone(pids_with(str(root), name="qemu-nbd"), timeout=5)
                kill_all(left)
    few = statistics.mean(r["MBps"] for r in rounds if r["vms"] == args.few)
    many = next(r for r in rounds if r["vms"] == args.vms)
    return {
        "vms": args.vms,
        "disks_per_vm": len(DISKS),
        "disk_bytes": size,
        "data_bytes": data,
        "layout": "alternating 16 MiB extents: random data, hole",
        "node_memory_budget_mib": 1024,
        "rounds": rounds,
        "vms50_total_mb_s": many["MBps"],
        "streams100_vs_streams10_throughput": many["MBps"] / few,
        "node_rss_mib_100_streams": many["node_peak_rss_mib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--few", type=int, default=5)
    parser.add_argument("--disk-mib", type=int, default=256)
    parser.add_argument("--tmp", default=None, help="where the temporary files go")
    args = parser.parse_args()
    figures = run(args)
    keys = ("vms50_total_mb_s", "streams100_vs_streams10_throughput", "node_rss_mib_100_streams")
    for key in keys:
        print(f"{key:<40}{figures[key]:>10.2f}")
    record("many_vms", figures, {key: figures[key] for key in keys})


if __name__ == "__main__":
    main()
