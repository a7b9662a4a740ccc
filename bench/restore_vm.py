"""A whole-VM restore to vCenter beside qemu-img, and while ten backups run.

    .venv/bin/python bench/restore_vm.py [--disk-gib 1] [--busy 10] [--runs 2]

Real processes (vcsim, the hub with its sshd, one enrolled node and its tunnel).
A VM of two disks (half random data, half holes, 16 MiB extents) is backed up
once; then, timed from `POST /api/v1/restore-points/ID/restore-vm` until the
task reads complete, the point is restored as a new VM (the node reads the
point through the tunnel and writes the datastore), alone ("idle") and while
`--busy` full backups of other VMs (2 x 256 MiB each) run ("busy"), the two
alternating. The baseline of the idle figure is `qemu-img convert -O raw` of
both disks' point files at once on the hub (no network, no vCenter). Each
restored VM is removed after. MB = 10^6 B of virtual size.

* `restore_vm_vs_qemu_img`: qemu-img's seconds over the idle restore's.
* `restore_during_backups_vs_idle`: the idle restore's seconds over the busy one's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from many_vms import full_backups, wait_complete
from node_backup import MiB, fill_half
from results import record
from tests.rig.net import free_port_range
from tests.rig.procs import kill_all, pids_with, wait_gone
from tests.rig.site import Site
from tests.rig.vcsim import running_vcsim
from tests.rig.vmware_vms import SCSI0, create_vm, destroy_vm, flat_file

DISKS = (2000, 2001)
BUSY_MIB = 256


def restore(site: Site, si: Any, point_id: str, name: str) -> float:
    started = time.perf_counter()
    queued = site.api.post(f"/api/v1/restore-points/{point_id}/restore-vm", json={"name": name})
    if queued.status_code != 202:
        raise SystemExit(f"the hub refused the restore: {queued.text}")
    wait_complete(site, queued.json()["job_id"])
    elapsed = time.perf_counter() - started
    vm = si.content.searchIndex.FindByInventoryPath(f"DC0/vm/{name}")
    destroy_vm(si, vm)
    return elapsed


def qemu_img_both(files: list[Path], out: Path) -> float:
    started = time.perf_counter()
    procs = [
        subprocess.Popen(["qemu-img", "convert", "-O", "raw", str(f), str(out / f"{i}.raw")])
        for i, f in enumerate(files)
    ]
    if any(p.wait() for p in procs):
        raise SystemExit("qemu-img convert failed")
    elapsed = time.perf_counter() - started
    for i in range(len(files)):
        (out / f"{i}.raw").unlink()
    return elapsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.disk_gib * 1024) * MiB
    pool = os.urandom(16 * MiB)
    limit = str(args.busy + 2)
    first, last = free_port_range(len(DISKS) * (args.busy + 2))
    hub = {
        "max_jobs": limit,
        "max_jobs_per_node": limit,
        "nbd_port_min": str(first),
        "nbd_port_max": str(last),
    }
    seconds: dict[str, list[float]] = {"idle": [], "busy": [], "qemu_img": []}
    with tempfile.TemporaryDirectory(prefix="sendense-bench-restore-vm-", dir=args.tmp) as tmp:
        root = Path(tmp)
        with running_vcsim(root / "vcsim") as vc, vc.session() as si:
            vm = create_vm(si, "restore-src", [(k, size, SCSI0) for k in DISKS], cbt=True)
            data = sum(fill_half(flat_file(vc, vm, k), size, pool) for k in DISKS)
            busy = [f"busy-{i:02d}" for i in range(args.busy)]
            for name in busy:
                other = create_vm(si, name, [(k, BUSY_MIB * MiB, SCSI0) for k in DISKS], cbt=True)
                for k in DISKS:
                    fill_half(flat_file(vc, other, k), BUSY_MIB * MiB, pool)
            site = Site(root / "site", hub, max_jobs=limit)
            try:
                site.start()
                repo = root / "site" / "repo"
                site.prepare(vc, repo)
                (job_id,) = full_backups(site, ["restore-src"])
                wait_complete(site, job_id)
                points = site.api.get("/api/v1/restore-points?vm=restore-src").json()
                point = points[-1]
                files = [repo / d["file_path"] for d in point["disks"]]
                out = root / "out"
                out.mkdir()
                for i in range(args.runs):
                    seconds["qemu_img"].append(qemu_img_both(files, out))
                    for mode in ("idle", "busy") if i % 2 == 0 else ("busy", "idle"):
                        running = full_backups(site, busy) if mode == "busy" else []
                        if running:
                            time.sleep(2.0)  # the backups are copying, not preparing
                        took = restore(site, si, point["id"], f"restored-{i}-{mode}")
                        for job_id in running:
                            wait_complete(site, job_id)
                        seconds[mode].append(took)
                        print(f"run {i + 1} {mode:<5} restore {took:>7.2f} s")
            finally:
                site.stop()
                kill_all(wait_gone(pids_with(str(root), name="qemu-nbd"), timeout=5))
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    virtual = size * len(DISKS)
    return {
        "virtual_bytes": virtual,
        "data_bytes": data,
        "busy_backups": args.busy,
        "runs": args.runs,
        **{
            k: {"seconds": seconds[k], "median_s": m, "MBps": virtual / m / 1e6}
            for k, m in medians.items()
        },
        "restore_vm_vs_qemu_img": medians["qemu_img"] / medians["idle"],
        "restore_during_backups_vs_idle": medians["idle"] / medians["busy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-gib", type=float, default=1.0)
    parser.add_argument("--busy", type=int, default=10)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tmp", default=None, help="where the temporary files go")
    args = parser.parse_args()
    figures = run(args)
    print(f"{'':<12}{'seconds':>10}{'MB/s virtual':>14}")
    for key in ("qemu_img", "idle", "busy"):
        print(f"{key:<12}{figures[key]['median_s']:>10.2f}{figures[key]['MBps']:>14.0f}")
    keys = ("restore_vm_vs_qemu_img", "restore_during_backups_vs_idle")
    for key in keys:
        print(f"{key:<36}{figures[key]:.3f}")
    record("restore_vm", figures, {key: figures[key] for key in keys})


if __name__ == "__main__":
    main()
