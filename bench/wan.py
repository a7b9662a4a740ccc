"""Full backup of a two-disk VM through the tunnel over an emulated WAN: 0, 10, 20
and 50 ms round trip between the node's ssh and the hub's sshd, in the same run.

    .venv/bin/python bench/wan.py [--disk-gib 1] [--runs 3] [--window-mib 8] [--rtts 0,50]

The site is bench/backup_tunnel.py's (`running_site`: vcsim, the hub with its
tunnel sshd, one enrolled node, its `sendense node tunnel`), with a VM of two
disks (default 2 x 1 GiB virtual), each half random data and half holes in
alternating 16 MiB extents. The node dials the rig's delaying proxy
(tests/rig/wan_proxy.py, its own process) instead of the hub's sshd: after
enrolment its tunnel settings (tunnel.json, the known_hosts line `[host]:port`)
are rewritten with `save_config` to name the proxy's port; the hub and its sshd
keep theirs. Every mode goes through the same proxy, 0 ms being the proxy
without delay: the LAN figure. The proxy holds at most --window-mib per
direction of the tunnel's one TCP connection, unacknowledged for an RTT (a TCP
window: one connection carries at most window/RTT). The node's NBD connections
per disk, each an ssh connection of its own through the proxy, are its setting
SENDENSE_NODE_NBD_CONNECTIONS_PER_DISK from this environment, else its default.

Each figure is one orchestrated full backup (bench/backup_tunnel.py's
`timed_backup`): `POST /api/v1/backups` on the hub's API until the job reads
`complete`, NBD through the tunnel (targets 127.0.0.2) and the hub's control
calls to the node through the tunnel's reverse forward, both delayed. Before
each mode the node's tunnel is stopped, a proxy with the mode's delay started
on the same port, the tunnel started again and the hub seen to report the node
connected (outside the timing). The order of the modes alternates from run to
run; one untimed warm-up backup (0 ms) comes first; each restore point is
compared with the -flat.vmdk files by `qemu-img compare`, outside the timing.
Medians of --runs. Also measured: the proxy's own throughput at 0 ms against
plain loopback (one connection, 1 GiB from a thread to a thread). Writes "wan"
and the top-level `wan10ms_vs_lan`, `wan20ms_vs_lan`, `wan50ms_vs_lan`
(rate at that RTT / rate at 0 ms) in bench/results.json. MB = 10^6 B.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backup_tunnel import DISKS, VM, nbd_connections, running_site, timed_backup, verified_point
from node_backup import MiB, fill_half
from results import record
from tests.rig.net import free_port
from tests.rig.procs import kill_all, pids_with, wait_gone
from tests.rig.site import Site
from tests.rig.vcsim import running_vcsim
from tests.rig.vmware_vms import SCSI0, create_vm, flat_file
from tests.rig.wan import WanProxy

from sendense.node.tunnel import load_config, save_config

RTTS = (0, 10, 20, 50)


def stream(port: int, size: int) -> float:
    """MB/s of `size` bytes sent over one connection to `port` (a receiver, or the
    proxy in front of it), until the receiver closed."""
    block = bytes(4 * MiB)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        started = time.perf_counter()
        for _ in range(size // len(block)):
            conn.sendall(block)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the receiver's close: everything arrived
        return size / (time.perf_counter() - started) / 1e6


def proxy_throughput(root: Path, window_mib: float, size: int = 1024 * MiB) -> dict[str, float]:
    """One connection to a receiving thread: plain loopback, then through the
    proxy at 0 ms."""
    rates = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def receive() -> None:
            conn, _ = listener.accept()
            with conn:
                buf = bytearray(4 * MiB)
                while conn.recv_into(buf):
                    pass

        for mode in ("loopback", "proxy"):
            thread = threading.Thread(target=receive, daemon=True)
            thread.start()
            if mode == "loopback":
                rates[mode] = stream(port, size)
            else:
                with WanProxy(root, port, 0, window_mib=window_mib) as wan:
                    rates[mode] = stream(wan.port, size)
            thread.join()
    return {
        "loopback_MBps": rates["loopback"],
        "proxy_0ms_MBps": rates["proxy"],
        "proxy_vs_loopback": rates["proxy"] / rates["loopback"],
    }


def dial_port(site: Site, port: int) -> None:
    """The node's tunnel settings, naming `port` on the hub's host: tunnel.json and
    the known_hosts line (`[host]:port key`) as enrolment writes them."""
    config = load_config(site.node.data_dir)
    save_config(site.node.data_dir, dataclasses.replace(config, tunnel_port=port))


def wait_connected(site: Site, timeout: float = 60.0) -> None:
    site.node.wait_tunnel("connected", timeout=timeout)
    deadline = time.monotonic() + timeout
    while not any(
        n["name"] == site.name and n["connected"] for n in site.api.get("/api/v1/nodes").json()
    ):
        if time.monotonic() > deadline:
            raise SystemExit("the hub does not see the node's tunnel")
        time.sleep(0.1)


@contextmanager
def through_wan(site: Site, root: Path, port: int, rtt: float, window: float) -> Iterator[WanProxy]:
    """The node's tunnel up through a proxy of `rtt` ms on `port`; the tunnel
    stopped before the proxy afterwards."""
    site.node.stop_tunnel()
    with WanProxy(root, site.hub.tunnel_port, rtt, window_mib=window, listen_port=port) as wan:
        try:
            site.node.start_tunnel()
            wait_connected(site)
            yield wan
        finally:
            site.node.stop_tunnel()


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.disk_gib * 1024) * MiB
    pool = os.urandom(16 * MiB)
    rtts: tuple[int, ...] = args.rtts
    seconds: dict[int, list[float]] = {rtt: [] for rtt in rtts}
    disk_rates: dict[int, list[float]] = {rtt: [] for rtt in rtts}
    peaks: dict[int, int] = dict.fromkeys(rtts, 0)
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="sendense-bench-wan-", dir=args.tmp) as tmp:
        root = Path(tmp)
        try:
            proxy = proxy_throughput(root / "wan", args.window_mib)
            with running_vcsim(root / "vcsim") as vc, vc.session() as si:
                vm = create_vm(si, VM, [(k, size, SCSI0) for k in DISKS], cbt=True)
                sources = {k: flat_file(vc, vm, k) for k in DISKS}
                data = sum(fill_half(p, size, pool) for p in sources.values())
                with running_site(root / "site", vc) as site:
                    port = free_port()
                    dial_port(site, port)
                    with through_wan(site, root / "wan", port, 0, args.window_mib):
                        timed_backup(site)  # warm-up: first vCenter login, first export
                    for i in range(args.runs):
                        for rtt in rtts if i % 2 == 0 else rtts[::-1]:
                            with through_wan(site, root / "wan", port, rtt, args.window_mib) as w:
                                elapsed, job_id = timed_backup(site)
                            peaks[rtt] = max(peaks[rtt], w.stats()["peak_held"])
                            for disk in verified_point(site, job_id, sources):
                                disk_rates[rtt].append(disk["rate_bytes_per_s"])
                            seconds[rtt].append(elapsed)
                            load.append(os.getloadavg()[0])
                            print(f"run {i + 1} {rtt:>3} ms{elapsed:>8.2f} s  job {job_id}")
        finally:
            left = wait_gone(pids_with(str(root), name="python"), timeout=5)
            kill_all(left)  # a proxy an interrupted run left (each is stopped by PID)
    virtual = size * len(DISKS)
    figures: dict[str, Any] = {
        "virtual_bytes": virtual,
        "data_bytes": data,
        "disks": len(DISKS),
        "layout": "alternating 16 MiB extents: random data, hole",
        "runs": args.runs,
        "measures": "POST /api/v1/backups (type full) until the job reads complete, the "
        "node's tunnel through the rig's delaying proxy (same proxy at every RTT)",
        "proxy_window_bytes": int(args.window_mib * MiB),
        "nbd_connections_per_disk": nbd_connections(),
        "proxy": proxy,
        "load_average_1min": {"min": min(load), "max": max(load)},  # a shared machine
    }
    lan = statistics.median(seconds[0])
    for rtt in rtts:
        median = statistics.median(seconds[rtt])
        figures[f"{rtt}ms"] = {
            "seconds": seconds[rtt],
            "median_s": median,
            "virtual_MBps": virtual / median / 1e6,
            "node_disk_data_MBps": statistics.median(disk_rates[rtt]) / 1e6,
            "proxy_peak_held": peaks[rtt],
            "vs_lan": lan / median,
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window-mib", type=float, default=8.0, help="the proxy's window")
    parser.add_argument("--tmp", default=None, help="where the temporary files go")
    parser.add_argument(
        "--rtts",
        type=lambda text: tuple(sorted({0, *map(int, text.split(","))})),
        default=RTTS,
        help="round trips in ms, comma-separated (0 is always measured)",
    )
    args = parser.parse_args()
    figures = run(args)
    proxy = figures["proxy"]
    print(
        f"proxy at 0 ms {proxy['proxy_0ms_MBps']:.0f} MB/s, plain loopback "
        f"{proxy['loopback_MBps']:.0f} MB/s (one connection)"
    )
    load = figures["load_average_1min"]
    print(f"load average (1 min) {load['min']:.1f}-{load['max']:.1f} during the run")
    print(
        f"{'full backup, 2 disks':<22}{'seconds':>10}{'MB/s virtual':>14}"
        f"{'node MB/s data/disk':>21}{'proxy peak MiB':>16}{'vs 0 ms':>9}"
    )
    for rtt in args.rtts:
        f = figures[f"{rtt}ms"]
        print(
            f"{f'{rtt} ms RTT':<22}{f['median_s']:>10.2f}{f['virtual_MBps']:>14.0f}"
            f"{f['node_disk_data_MBps']:>21.0f}{f['proxy_peak_held'] / MiB:>16.1f}"
            f"{f['vs_lan']:>9.3f}"
        )
    ratios = {f"wan{rtt}ms_vs_lan": figures[f"{rtt}ms"]["vs_lan"] for rtt in args.rtts[1:]}
    record("wan", figures, ratios)


if __name__ == "__main__":
    main()
