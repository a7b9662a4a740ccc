"""Full backup of a two-disk VM, through the tunnel and direct, in the same run.

    .venv/bin/python bench/backup_tunnel.py [--disk-gib 1] [--runs 3]

Everything is a real process: vcsim (tests/rig/vcsim.py), the hub (`sendense hub
serve`, with its tunnel sshd), one node (`sendense node serve`) enrolled with a
pairing code and the hub's fingerprint, and its tunnel (`sendense node tunnel`,
ssh). The VM has two disks (default 2 x 1 GiB virtual), each half random data
and half holes in alternating 16 MiB extents.

Each figure is one orchestrated full backup: `POST /api/v1/backups` on the hub's
API, timed from the request until `GET /api/v1/jobs/ID` says `complete` (polled
every 50 ms). That includes the hub asking the node for the VM's disks, creating
two QCOW2 files and their qemu-nbd exports, the node's snapshot, reads over the
datastore's HTTPS, NBD writes and flush, snapshot removal, the hub's 0.25 s
polls of the node, the hub's check of both images, and the commit. The two
modes differ in the NBD data path only:

* tunnel: the targets string names 127.0.0.2 (SENDENSE_HUB_TARGETS_HOST), the
  node's end of the tunnel; each NBD connection is a session of the tunnel's
  ssh, relayed by the hub's sshd to the export's Unix socket (node/forwards.py).
* direct: the targets string names 127.0.0.1; the node (hub_export_dir) writes
  the export's Unix socket itself: no ssh, no encryption. (Before the exports
  became sockets, direct was loopback TCP to qemu-nbd's port.)

In both modes the hub reaches the node's API through its reverse forward: the
product has no other way to reach an enrolled node (NodeClient dials
127.0.0.1:<reverse port> and refuses a listener that is not its own sshd). So
"direct" is direct data with tunnelled control (inventory, start, polls: a few
KB per job). The hub is restarted with the mode's targets host before every run
of either mode (outside the timing; the node and its tunnel stay up); the first
mode of each pair alternates; one untimed warm-up backup comes first. Each
restore point is checked with `qemu-img compare` against the -flat.vmdk files,
outside the timing. The tunnel's CPU (`tunnel_cpu_s_per_gib`: user + system
seconds of the hub's sshd and every process below it, live or reaped (each
connection's sshd processes, the NBD relays), of the node's tunnel ssh and of
the node's ssh clients, one per NBD connection, per GiB of data, both ends) is
sampled around each tunnel backup. The node's
NBD connections per disk (`nbd_connections_per_disk`) are its setting
SENDENSE_NODE_NBD_CONNECTIONS_PER_DISK from this environment, else its default.
Medians; MB = 10^6 B. Writes "backup_tunnel" and the top-level
`tunnel_backup_vs_direct` (rate / rate) and `tunnel_vs_direct` (the same
figure) in bench/results.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node_backup import MiB, fill_half
from results import record
from tests.rig.procs import kill_all, pids_with, wait_gone
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim, running_vcsim
from tests.rig.vmware_vms import SCSI0, create_vm, flat_file

from sendense.hub.nodes.tunnel_sshd import export_socket_root
from sendense.hub.service import hub_identity
from sendense.nbd.qemu_img import QemuImg
from sendense.node.config import NodeSettings

VM = "bench-tunnel"
DISKS = (2000, 2001)
TARGETS_HOST = {"tunnel": "127.0.0.2", "direct": "127.0.0.1"}


@contextmanager
def running_site(root: Path, vc: Vcsim) -> Iterator[Site]:
    """Hub and enrolled node as processes; every one of them (and any qemu-nbd of
    the hub's) gone afterwards, whatever happened."""
    site = Site(root)
    try:
        site.start()
        # Direct mode: the node writes its exports' sockets on this machine itself.
        data_dir = site.hub.data_dir
        exports = export_socket_root(hub_identity(data_dir), data_dir)
        site.node.env["SENDENSE_NODE_HUB_EXPORT_DIR"] = str(exports)
        site.enroll_and_connect()
        site.add_vcenter(vc)
        repo = root / "repo"
        repo.mkdir()
        added = site.api.post("/api/v1/repositories", json={"path": str(repo)})
        if added.status_code != 201:
            raise SystemExit(f"adding the repository failed: {added.text}")
        yield site
    finally:
        site.stop()
        for name in ("qemu-nbd", "ssh"):
            left = wait_gone(pids_with(str(root), name=name), timeout=5)
            kill_all(left)


def nbd_connections() -> int:
    """The node's NBD connections per disk: its setting from this environment
    (the rig's node inherits it), else its default."""
    given = os.environ.get("SENDENSE_NODE_NBD_CONNECTIONS_PER_DISK")
    field = NodeSettings.model_fields.get("nbd_connections_per_disk")
    return int(given) if given else int(field.default) if field else 1  # 1: before the setting


def restart_hub(site: Site, mode: str, timeout: float = 30.0) -> None:
    """The hub again, its NBD targets naming the mode's address; back once it sees
    the node's reverse forward."""
    site.hub.stop()
    site.hub.env["SENDENSE_HUB_TARGETS_HOST"] = TARGETS_HOST[mode]
    site.hub.start()
    deadline = time.monotonic() + timeout
    while True:
        nodes = site.api.get("/api/v1/nodes").json()
        if any(n["name"] == site.name and n["connected"] for n in nodes):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the node did not come back after the hub restarted: {nodes}")
        time.sleep(0.1)


def timed_backup(site: Site, timeout: float = 600.0) -> tuple[float, str]:
    """One full backup, request to `complete`: (seconds, job id)."""
    started = time.perf_counter()
    queued = site.api.post("/api/v1/backups", json={"vm": VM, "type": "full"})
    if queued.status_code != 202:
        raise SystemExit(f"the hub refused the backup: {queued.text}")
    job_id: str = queued.json()["job_id"]
    while True:
        job = site.api.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in ("complete", "failed", "cancelled"):
            break
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"job {job_id} still {job['state']} after {timeout:.0f}s")
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if job["state"] != "complete":
        raise SystemExit(f"job {job_id} {job['state']}: {job['error']}")
    return elapsed, job_id


def tunnel_pids(root: Path) -> tuple[list[int], list[int]]:
    """Whose time counts, with their descendants': the hub's sshd (the processes
    of each connection, the tunnel's and each NBD connection's, and their NBD
    relays) and the node's tunnel ssh; whose descendants' time only: `sendense
    node serve` (each NBD connection is an ssh client of its own, its child:
    node/forwards.py)."""
    node_ssh = [p for p in pids_with(str(root), name="ssh") if _argv_has(p, "ControlMaster=yes")]
    serve = [p for p in pids_with(str(root), name="python") if _argv_has(p, "serve")]
    serve = [p for p in serve if _argv_has(p, "node")]
    return pids_with(str(root), name="sshd") + node_ssh, serve


def _argv_has(pid: int, word: str) -> bool:
    try:
        return word.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def _times() -> tuple[dict[int, tuple[int, int]], dict[int, list[int]]]:
    """Per live process: (its own user + system ticks, its reaped children's);
    and each one's live children."""
    times: dict[int, tuple[int, int]] = {}
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        # state ppid ... utime stime cutime cstime
        times[pid] = (int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
        children.setdefault(int(fields[1]), []).append(pid)
    return times, children


def cpu_seconds(pids: tuple[list[int], list[int]]) -> float:
    """User + system time of the first processes and of all their descendants
    (live ones read, reaped ones in their parents' children's time), and of the
    second ones' descendants only. Sampled before and after a backup: a process
    that lived through it (the tunnel's connection on the hub) counts for what it
    did in between, one that ended counts in its parent."""
    times, children = _times()

    def tree(pid: int, own: bool) -> int:
        mine, reaped = times.get(pid, (0, 0))
        below = sum(tree(child, True) for child in children.get(pid, []))
        return (mine if own else 0) + reaped + below

    whole, descendants = pids
    total = sum(tree(p, True) for p in whole) + sum(tree(p, False) for p in descendants)
    return total / os.sysconf("SC_CLK_TCK")


def targets_host_of(site: Site, job_id: str) -> str:
    """The address the job's targets string named, from the hub's log line."""
    for line in site.hub.log.read_text(errors="replace").splitlines():
        if f"job prepared job={job_id}" in line:
            return line.split("targets=", 1)[1].split("nbd://", 2)[1].split(":", 1)[0]
    raise SystemExit(f"no 'job prepared' line for job {job_id} in {site.hub.log}")


def verified_point(site: Site, job_id: str, sources: dict[int, Path]) -> list[dict[str, Any]]:
    """The job's restore point disks, each compared with its source."""
    points = site.api.get(f"/api/v1/restore-points?vm={VM}").json()
    (point,) = [p for p in points if p["job_id"] == job_id]
    repo = site.hub.data_dir.parent / "repo"
    disks: list[dict[str, Any]] = point["disks"]
    for disk in disks:
        if disk["backup_type"] != "full" or disk["status"] != "complete":
            raise SystemExit(f"job {job_id} disk {disk['disk_key']}: {disk}")
        if not QemuImg().compare(
            sources[disk["disk_key"]], repo / disk["file_path"], "raw", "qcow2"
        ):
            raise SystemExit(f"job {job_id} disk {disk['disk_key']} differs from its source")
    return disks


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.disk_gib * 1024) * MiB
    pool = os.urandom(16 * MiB)
    seconds: dict[str, list[float]] = {"tunnel": [], "direct": []}
    tunnel_cpu: list[float] = []
    disk_rates: dict[str, dict[int, list[float]]] = {m: {k: [] for k in DISKS} for m in seconds}
    with tempfile.TemporaryDirectory(prefix="sendense-bench-backup-tunnel-", dir=args.tmp) as tmp:
        root = Path(tmp)
        with running_vcsim(root / "vcsim") as vc, vc.session() as si:
            vm = create_vm(si, VM, [(k, size, SCSI0) for k in DISKS], cbt=True)
            sources = {k: flat_file(vc, vm, k) for k in DISKS}
            data = sum(fill_half(p, size, pool) for p in sources.values())
            with running_site(root / "site", vc) as site:
                timed_backup(site)  # warm-up: first vCenter login, first export
                for i in range(args.runs):
                    for mode in ("tunnel", "direct") if i % 2 == 0 else ("direct", "tunnel"):
                        restart_hub(site, mode)
                        pids = tunnel_pids(root / "site")
                        cpu = cpu_seconds(pids)
                        elapsed, job_id = timed_backup(site)
                        if mode == "tunnel":
                            time.sleep(1.0)  # the sessions end and are reaped
                            tunnel_cpu.append(cpu_seconds(pids) - cpu)
                        if targets_host_of(site, job_id) != TARGETS_HOST[mode]:
                            raise SystemExit(f"job {job_id} did not write NBD {mode}")
                        for disk in verified_point(site, job_id, sources):
                            disk_rates[mode][disk["disk_key"]].append(disk["rate_bytes_per_s"])
                        seconds[mode].append(elapsed)
                        print(f"run {i + 1} {mode:<7}{elapsed:>8.2f} s  job {job_id}")
    virtual = size * len(DISKS)
    figures: dict[str, Any] = {
        "virtual_bytes": virtual,
        "data_bytes": data,
        "disks": len(DISKS),
        "layout": "alternating 16 MiB extents: random data, hole",
        "runs": args.runs,
        "measures": "POST /api/v1/backups (type full) until the job reads complete: "
        "orchestrated job, real processes (vcsim, hub + sshd, node serve + tunnel)",
        "control_path": "hub -> node API through the tunnel's reverse forward in both modes",
        "nbd_connections_per_disk": nbd_connections(),
    }
    for mode in ("tunnel", "direct"):
        median = statistics.median(seconds[mode])
        figures[mode] = {
            "nbd_targets_host": TARGETS_HOST[mode],
            "seconds": seconds[mode],
            "median_s": median,
            "virtual_MBps": virtual / median / 1e6,
            "per_disk_virtual_MBps": size / median / 1e6,
            "node_disk_data_MBps": {
                str(k): statistics.median(r) / 1e6 for k, r in disk_rates[mode].items()
            },
        }
    figures["tunnel_cpu_s"] = tunnel_cpu
    figures["tunnel_cpu_s_per_gib"] = statistics.median(tunnel_cpu) / (data / (1 << 30))
    rates = figures["tunnel"]["virtual_MBps"], figures["direct"]["virtual_MBps"]
    figures["tunnel_backup_vs_direct"] = rates[0] / rates[1]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmp", default=None, help="where the temporary files go")
    args = parser.parse_args()
    figures = run(args)
    print(
        f"{'full backup, 2 disks':<22}{'seconds':>10}{'MB/s virtual':>14}{'per disk':>10}"
        f"{'node MB/s data/disk':>21}"
    )
    for key in ("direct", "tunnel"):
        f = figures[key]
        node = " ".join(f"{r:.0f}" for r in f["node_disk_data_MBps"].values())
        print(
            f"{key:<22}{f['median_s']:>10.2f}{f['virtual_MBps']:>14.0f}"
            f"{f['per_disk_virtual_MBps']:>10.0f}{node:>21}"
        )
    print(f"tunnel_backup_vs_direct {figures['tunnel_backup_vs_direct']:.3f}")
    print(f"tunnel_cpu_s_per_gib {figures['tunnel_cpu_s_per_gib']:.2f} (both ends, per GiB)")
    ratio = figures["tunnel_backup_vs_direct"]
    # tunnel_vs_direct is the full backup's figure, not the writer's
    ratios = {"tunnel_backup_vs_direct": ratio, "tunnel_vs_direct": ratio}
    ratios["tunnel_cpu_s_per_gib"] = figures["tunnel_cpu_s_per_gib"]
    record("backup_tunnel", figures, ratios)


if __name__ == "__main__":
    main()
