"""Throughput through the tunnel beside direct loopback NBD writes, in the same run.

    .venv/bin/python bench/tunnel.py [--size-gib 2] [--runs 3]

A hub (its services in this process, its tunnel sshd a child), one node enrolled
with a pairing code and its tunnel supervisor (`sendense node tunnel`) running.
The node's NbdWriter (its NBD connections per disk, engine.CopyTuning, or
BENCH_CONNECTIONS; 8 requests in flight among them) writes the same source (half
random data, half holes) into a fresh QCOW2 export on the hub's Unix socket for
the node, once on that socket (direct) and once through the tunnel
(nbd://127.0.0.2:PORT, which the node turns into an ssh connection per NBD
connection, relayed to that socket: node/forwards.py), and
`nbdcopy` (bench/node_backup.py's options) into the same tunnel socket:
`tunnel_writer_vs_nbdcopy_tunnel`. Median of the runs, MB/s of data. Writes
`tunnel` and the top-level `tunnel_writer_vs_direct` and
`tunnel_writer_vs_nbdcopy_tunnel` in bench/results.json: the NBD writer alone.
The top-level `tunnel_vs_direct` is a whole orchestrated full backup's figure,
from bench/backup_tunnel.py.
"""

from __future__ import annotations

import argparse
import asyncio
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

from nbd_writer import feed, make_source
from node_backup import NBDCOPY
from results import record
from tests.rig.net import free_port, free_port_range

from sendense.common.config import load_settings
from sendense.common.sshkeys import enrollment_challenge, ensure_keypair, sign
from sendense.common.targets import NbdTarget
from sendense.hub.config import HubSettings
from sendense.hub.repository.logins import NodeLogin, node_login
from sendense.hub.service import Hub
from sendense.nbd.qemu_img import QemuImg
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd
from sendense.nbd.writer import NbdWriter
from sendense.node.engine import CopyTuning
from sendense.node.forwards import HubExports, socket_uri
from sendense.node.tunnel import TunnelConfig, save_config, tunnel_dir

BENCH_GROUP = "sendense-bench-nodes"
# The node's NBD connections per disk (engine.CopyTuning), 8 requests in flight
# among them, as the node writes; through the tunnel each its own ssh connection.
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", CopyTuning().connections))


async def write(
    node_dir: Path | None, port: int, sock: Path, source: Path, nbdcopy: bool = False
) -> None:
    """Direct to the socket (node_dir None), or as the node through its tunnel:
    its NbdWriter, or `nbdcopy` into the same tunnel socket."""
    if node_dir is None:
        uri = socket_uri(sock, "bench")
        async with NbdWriter(uri, max_in_flight=8, connections=CONNECTIONS) as writer:
            await feed(writer, source)
        return
    exports, targets = HubExports(node_dir), [NbdTarget(1, "127.0.0.2", port, "bench")]
    uris = await exports.open(targets)
    try:
        if nbdcopy:
            done = await asyncio.to_thread(
                subprocess.run, [*NBDCOPY, str(source), uris[1]], check=False
            )
            if done.returncode != 0:
                raise SystemExit(f"nbdcopy through the tunnel failed ({done.returncode})")
            return
        async with NbdWriter(
            uris[1], max_in_flight=8, request_size=4 << 20, connections=CONNECTIONS
        ) as writer:
            await feed(writer, source)
    finally:
        await exports.close(targets)


def one_run(
    node_dir: Path | None,
    login: NodeLogin,
    sock: Path,
    source: Path,
    size: int,
    work: Path,
    nbdcopy: bool = False,
) -> float:
    port = int(sock.stem)
    target = work / "target.qcow2"
    os.sync()
    QemuImg().create(target, size)
    spec = ExportSpec(target, port, "bench", socket=sock)
    try:
        with QemuNbd(spec, log_path=work / "qemu-nbd.log"):
            os.chown(sock, login.uid, login.gid)  # as ExportManager does: the relay's user
            start = time.perf_counter()
            asyncio.run(write(node_dir, port, sock, source, nbdcopy))
            return time.perf_counter() - start
    finally:
        target.unlink(missing_ok=True)


def enrolled_node(hub: Hub, node_dir: Path) -> TunnelConfig:
    code, _ = hub.nodes.pairing_code()
    keys = ensure_keypair(tunnel_dir(node_dir) / "id_ed25519", "bench-node")
    challenge = enrollment_challenge(code, "bench-node", keys.public_key, hub.api_cert_sha256())
    signature = sign(keys.private_path, challenge)
    info = hub.enroll_node(code, "bench-node", keys.public_key, signature, "unused-token")
    s = hub.settings
    config = TunnelConfig(
        hub_host="127.0.0.1",
        tunnel_port=s.tunnel_port,
        node_name=info.name,
        reverse_port=info.reverse_port or 0,
        nbd_port_min=s.nbd_port_min,
        nbd_port_max=s.nbd_port_max,
        api_port=s.listen_port,
        hub_host_key=hub.tunnel_identity().public_key,
        tunnel_user=info.system_user or "",
        local_address="127.0.0.2",
        node_api_port=free_port(),
    )
    save_config(node_dir, config)
    return config


def wait_connected(node_dir: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    status = tunnel_dir(node_dir) / "status.json"
    while time.monotonic() < deadline:
        if status.exists() and json.loads(status.read_text()).get("state") == "connected":
            return
        time.sleep(0.1)
    raise SystemExit("the tunnel did not come up")


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.size_gib * (1 << 30))
    with tempfile.TemporaryDirectory(prefix="sendense-bench-tunnel-") as tmp:
        work = Path(tmp)
        source = work / "source.raw"
        data = make_source(source, size)
        first, last = free_port_range(2)
        settings = load_settings(
            HubSettings,
            data_dir=work / "hub",
            nbd_port_min=first,
            nbd_port_max=last,
            tunnel_port=free_port(),
            listen_port=free_port(),
            min_free_bytes=0,
            tunnel_group=BENCH_GROUP,
        )
        hub = Hub.open(settings)
        supervisor = None
        try:
            hub.start_tunnel()
            node_dir = work / "node"
            enrolled_node(hub, node_dir)
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "sendense", "node", "tunnel", "--data-dir", str(node_dir)],
                stdin=subprocess.DEVNULL,
            )
            wait_connected(node_dir)
            login = node_login(hub.nodes.get("bench-node"))
            sock = hub.exports.socket_path(login, first)
            sock.parent.mkdir(parents=True, mode=0o700)
            os.chown(sock.parent, login.uid, login.gid)
            direct, tunnel, copied = [], [], []
            for _ in range(args.runs):
                direct.append(one_run(None, login, sock, source, size, work))
                tunnel.append(one_run(node_dir, login, sock, source, size, work))
                copied.append(one_run(node_dir, login, sock, source, size, work, nbdcopy=True))
        finally:
            if supervisor is not None:
                supervisor.terminate()
                supervisor.wait(20)
            if any(n.name == "bench-node" for n in hub.nodes.list()):
                hub.revoke_node("bench-node")  # its system user goes
            hub.close()
            subprocess.run(["groupdel", BENCH_GROUP], capture_output=True, check=False)
    d, t, c = statistics.median(direct), statistics.median(tunnel), statistics.median(copied)
    return {
        "size_bytes": size,
        "data_bytes": data,
        "runs": args.runs,
        "transport": "OpenSSH (hub-managed sshd), aes128-gcm, a session per NBD "
        "connection relayed (a stdlib copy loop, as the node's user) to the export's "
        "Unix socket; direct: that socket",
        "writer_connections": CONNECTIONS,
        "direct": {"seconds": direct, "median_s": d, "data_MBps": data / d / 1e6},
        "tunnel": {"seconds": tunnel, "median_s": t, "data_MBps": data / t / 1e6},
        "nbdcopy_tunnel": {"seconds": copied, "median_s": c, "data_MBps": data / c / 1e6},
        "tunnel_writer_vs_direct": d / t,
        "tunnel_writer_vs_nbdcopy_tunnel": c / t,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    figures = run(args)
    print(f"{'path':<16}{'seconds':>10}{'MB/s data':>12}")
    for key in ("direct", "tunnel", "nbdcopy_tunnel"):
        print(f"{key:<16}{figures[key]['median_s']:>10.2f}{figures[key]['data_MBps']:>12.0f}")
    keys = ("tunnel_writer_vs_direct", "tunnel_writer_vs_nbdcopy_tunnel")
    for key in keys:
        print(f"{key} {figures[key]:.3f}")
    record("tunnel", figures, {key: figures[key] for key in keys})


if __name__ == "__main__":
    main()
