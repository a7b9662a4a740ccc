"""The variants compared, the tunnel each sets up and the servers they share, and
one run: a fresh QCOW2 served by qemu-nbd, nbdcopy through the tunnel, the time
and the CPU of every side."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transports.loopback import HUB_API_PORT, HUB_IP, NODE_IP, free_port, probe_nbd
from transports.openssh import SshEnv, ssh_forward
from transports.processes import PROCS, system_busy, tree_cpu, wait_line

EXTENT = 16 << 20
NBDCOPY = ["nbdcopy", f"--request-size={4 << 20}", "-R", "8", f"--queue-size={64 << 20}", "--flush"]


@dataclass
class Variant:
    name: str
    transport: str
    cipher: str
    connections: int = 4
    tls_qemu: bool = False
    tuned: bool = False  # asyncssh: 16 MiB window, 256 KiB packets on both sides
    data: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""


@dataclass
class Bench:
    work: Path
    data: Path
    nbd_port: int
    ssh: SshEnv
    asyncssh_port: int
    asyncssh_tuned_port: int
    tls_port: int
    tls_server_dir: Path
    tls_client_dir: Path
    asyncssh_ok: bool
    servers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


TUNED = ["--window", str(16 << 20), "--max-pktsize", str(256 << 10)]


# The roles run in child processes started through the benchmark's own script.
SCRIPT = Path(__file__).resolve().parent.parent / "tunnel_transports.py"


def role_argv(role: str, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), role, *args]


@contextlib.contextmanager
def tunnel(b: Bench, v: Variant) -> Iterator[tuple[str, list[int], str]]:
    """Yields (nbd uri for nbdcopy, the tunnel's [node-side, hub-side] pids, cipher)."""
    if v.transport == "direct":
        yield f"nbd://{HUB_IP}:{b.nbd_port}/disk", [], "none"
        return
    if v.transport == "qemu-tls":
        yield (
            f"nbds://{HUB_IP}:{b.nbd_port}/disk?tls-certificates={b.tls_client_dir}",
            [],
            "TLS (GnuTLS default)",
        )
        return
    p2 = free_port(NODE_IP)
    uri = f"nbd://{NODE_IP}:{p2}/disk"
    if v.transport == "openssh":
        extra = ["-c", v.cipher] if v.cipher != "default" else []
        log = b.work / "ssh-client.log"
        log.write_bytes(b"")
        with ssh_forward(b.ssh, *extra, "-L", f"{NODE_IP}:{p2}:{HUB_IP}:{b.nbd_port}") as proc:
            probe_nbd(NODE_IP, p2)
            cipher = next(
                (
                    ln.split("cipher:")[1].split()[0]
                    for ln in log.read_text().splitlines()
                    if "kex: client->server cipher:" in ln
                ),
                "?",
            )
            sshd = b.servers["sshd"]
            yield uri, [proc.pid, sshd.pid], cipher
        return
    if v.transport == "asyncssh":
        extra = ["--cipher", v.cipher] if v.cipher != "default" else []
        port, server = b.asyncssh_port, b.servers["asyncssh"]
        if v.tuned:
            extra += TUNED
            port, server = b.asyncssh_tuned_port, b.servers["asyncssh-tuned"]
        proc = PROCS.start(
            role_argv(
                "asyncssh-client",
                "--port",
                str(port),
                "--known-hosts",
                str(b.work / "known_hosts_asyncssh"),
                "--key",
                str(b.work / "node_key"),
                "--local",
                f"{NODE_IP}:{p2}:{HUB_IP}:{b.nbd_port}",
                *extra,
            ),
            b.work / "asyncssh-client.log",
            stdout=subprocess.PIPE,
        )
        try:
            line = wait_line(proc, "READY", 20)
            probe_nbd(NODE_IP, p2)
            yield uri, [proc.pid, server.pid], line.split()[1].split("=")[1]
        finally:
            PROCS.stop(proc)
        return
    if v.transport == "tls-proxy":
        c = b.tls_client_dir
        proc = PROCS.start(
            role_argv(
                "tls-client",
                "--port",
                str(b.tls_port),
                "--listen",
                f"{NODE_IP}:{p2}",
                "--cert",
                str(c / "client-cert.pem"),
                "--key",
                str(c / "client-key.pem"),
                "--ca",
                str(c / "ca-cert.pem"),
            ),
            b.work / "tls-client.log",
            stdout=subprocess.PIPE,
        )
        try:
            wait_line(proc, "READY", 20)
            probe_nbd(NODE_IP, p2)
            lines = (b.work / "tls-client.log").read_text().splitlines()
            cipher = next((ln[7:] for ln in reversed(lines) if ln.startswith("CIPHER ")), "?")
            yield uri, [proc.pid, b.servers["tls"].pid], cipher
        finally:
            PROCS.stop(proc)
        return
    raise ValueError(v.transport)


def start_servers(b: Bench) -> None:
    b.ssh.start()
    assert b.ssh.proc is not None
    b.servers["sshd"] = b.ssh.proc
    for name, port, extra in (
        ("asyncssh", b.asyncssh_port, []),
        ("asyncssh-tuned", b.asyncssh_tuned_port, TUNED),
    ):
        if not b.asyncssh_ok:
            break
        proc = PROCS.start(
            role_argv(
                "asyncssh-server",
                "--port",
                str(port),
                "--host-key",
                str(b.work / "host_key"),
                "--authorized-keys",
                str(b.work / "authorized_keys_asyncssh"),
                "--allow-open",
                f"{HUB_IP}:{b.nbd_port}",
                f"{HUB_IP}:{HUB_API_PORT}",
                "--allow-listen",
                f"{HUB_IP}:{b.ssh.listen_port}",
                *extra,
            ),
            b.work / f"{name}-server.log",
            stdout=subprocess.PIPE,
        )
        wait_line(proc, "READY", 20)
        b.servers[name] = proc
    s = b.tls_server_dir
    proc = PROCS.start(
        role_argv(
            "tls-server",
            "--port",
            str(b.tls_port),
            "--dest",
            f"{HUB_IP}:{b.nbd_port}",
            "--cert",
            str(s / "server-cert.pem"),
            "--key",
            str(s / "server-key.pem"),
            "--ca",
            str(s / "ca-cert.pem"),
        ),
        b.work / "tls-server.log",
        stdout=subprocess.PIPE,
    )
    wait_line(proc, "READY", 20)
    b.servers["tls"] = proc


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
        os.fsync(out.fileno())
    return data


def one_run(b: Bench, v: Variant, source: Path, size: int, verify: bool) -> dict[str, Any]:
    from sendense.nbd.qemu_img import QemuImg
    from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd

    class TlsQemuNbd(QemuNbd):
        @property
        def argv(self) -> list[str]:
            base = super().argv
            creds = [
                "--object",
                f"tls-creds-x509,id=tls0,endpoint=server,dir={b.tls_server_dir},verify-peer=on",
                "--tls-creds=tls0",
            ]
            return [base[0], *creds, *base[1:]]

    target = b.data / "target.qcow2"
    target.unlink(missing_ok=True)
    os.sync()  # the previous run's writeback settles outside the timing
    QemuImg().create(target, size)
    cls = TlsQemuNbd if v.tls_qemu else QemuNbd
    server = cls(ExportSpec(target, b.nbd_port, "disk"), log_path=b.work / "qemu-nbd.log")
    try:
        server.start()
        with tunnel(b, v) as (uri, roots, cipher):
            argv = [*NBDCOPY, "-C", str(v.connections), str(source), uri]
            t0 = [tree_cpu([r]) for r in roots]
            q0, s0 = tree_cpu([server.pid]), system_busy()
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            elapsed = time.perf_counter() - start
            t1 = [tree_cpu([r]) for r in roots]
            q1, s1 = tree_cpu([server.pid]), system_busy()
            if proc.returncode != 0:
                raise RuntimeError(f"{v.name}: nbdcopy exited {proc.returncode}")
    finally:
        server.stop()
    if verify and not QemuImg().compare(source, target, "raw", "qcow2"):
        raise RuntimeError(f"{v.name}: the target differs from the source")
    target.unlink(missing_ok=True)
    side = [sum(a.values()) - sum(b.values()) for a, b in zip(t1, t0, strict=True)] or [0.0, 0.0]
    ours = {
        "tunnel_node_cpu": side[0],
        "tunnel_hub_cpu": side[1],
        "qemu_nbd_cpu": sum(q1.values()) - sum(q0.values()),
        "nbdcopy_cpu": usage.ru_utime + usage.ru_stime,
    }
    # The machine's busy time beyond our processes: softirq of loopback TCP, block
    # I/O kworkers, and anything another session runs meanwhile.
    other = (s1 - s0) - sum(ours.values())
    return {
        "seconds": elapsed,
        "tunnel_cpu": side[0] + side[1],
        **ours,
        "other_cpu": other,
        "cipher": cipher,
    }


def variants(asyncssh_ok: bool, only: set[str] | None) -> list[Variant]:
    vs = [
        Variant("direct", "direct", "none"),
        Variant("direct-C1", "direct", "none", connections=1),
        Variant("openssh-default", "openssh", "default"),
        Variant("openssh-aes128gcm", "openssh", "aes128-gcm@openssh.com"),
        Variant("openssh-aes256gcm", "openssh", "aes256-gcm@openssh.com"),
        # OpenSSH's default cipher is chacha20-poly1305: "default" is that variant.
        Variant("openssh-aes128gcm-C1", "openssh", "aes128-gcm@openssh.com", connections=1),
        Variant("tls-proxy", "tls-proxy", "default"),
        Variant("tls-proxy-C1", "tls-proxy", "default", connections=1),
        Variant("qemu-nbd-tls", "qemu-tls", "default", tls_qemu=True),
        Variant("qemu-nbd-tls-C1", "qemu-tls", "default", connections=1, tls_qemu=True),
    ]
    if asyncssh_ok:
        aes = "aes128-gcm@openssh.com"
        vs[6:6] = [
            Variant("asyncssh-default", "asyncssh", "default"),
            Variant("asyncssh-aes128gcm", "asyncssh", aes),
            Variant("asyncssh-aes128gcm-C1", "asyncssh", aes, connections=1),
            Variant("asyncssh-aes128gcm-tuned", "asyncssh", aes, tuned=True),
        ]
    return [v for v in vs if only is None or v.name in only or v.name == "direct"]
