"""Benchmark node->hub tunnel transports for NBD writes: direct, OpenSSH, asyncssh, TLS.

    .venv/bin/python bench/tunnel_transports.py [--runs 3] [--data-gib 2] [--only a,b] [--out F]

What it does, all on loopback:
  * source: a sparse raw file of 2 x --data-gib GiB, alternating 16 MiB extents of
    random data and holes (so --data-gib GiB of data plus as much of holes);
  * target: a fresh QCOW2 of that size per run, served by the project's QemuNbd
    (`qemu-nbd --shared=10 --persistent --cache=none -f qcow2 -b 127.0.0.1`);
  * writer: `nbdcopy --request-size=4194304 -R 8 --queue-size=67108864 --flush`
    (nbdcopy's default -C 4 uses 4 connections because qemu-nbd advertises
    multi-conn; the "-C1" variants force one);
  * transports: direct; OpenSSH (a private sshd with its own config, host key
    and authorized_keys, `ssh -N -L 127.0.0.2:P2:127.0.0.1:P`) with several
    ciphers; asyncssh (server and client each in its own Python process,
    `forward_local_port`); an asyncio TLS 1.3 forwarder pair with mutual
    certificates; qemu-nbd's own TLS (`--tls-creds`, nbdcopy to `nbds://`).

Per variant: median MB/s of data (MB = 10^6 B) over --runs, the ratio to direct,
and CPU seconds per GiB of data used by the tunnel processes (utime+stime+
cutime+cstime over each tunnel process tree from /proc, before vs after), plus
nbdcopy's and qemu-nbd's CPU. Runs are interleaved across variants so drift hits
all alike. Before measuring, it checks the restrictions of both SSH servers
(shell refused, unpermitted forwards refused, reverse forward, host-key pinning).

Every process it starts (sshd, ssh, asyncssh and TLS roles, qemu-nbd) is stopped
in a finally block, descendants included, also on SIGTERM/SIGHUP/^C.
The same file also holds the roles that run in child processes
(`asyncssh-server`, `asyncssh-client`, `tls-server`, `tls-client`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXTENT = 16 << 20
NBDCOPY = ["nbdcopy", f"--request-size={4 << 20}", "-R", "8", f"--queue-size={64 << 20}", "--flush"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
SSHD = "/usr/sbin/sshd"  # sshd refuses to start unless run by its absolute path
NODE_IP = "127.0.0.2"  # what the node sees: the hub's ports on its own loopback
HUB_IP = "127.0.0.1"
# The hub's NBD pool and API: what the tunnel must permit, and nothing else.
NBD_POOL = range(10100, 10201)
HUB_API_PORT = 8082


# --------------------------------------------------------------------------- processes


def free_port(host: str = HUB_IP) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields proper start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def proc_start_time(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[19]) if f else None


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f:
                children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def tree_cpu(roots: list[int]) -> dict[int, float]:
    """pid -> utime+stime+cutime+cstime (s) for each root and its descendants.

    Summing the children's fields too keeps the delta right when a process that
    existed at the first snapshot has exited and been reaped by the second."""
    out: dict[int, float] = {}
    for root in roots:
        for pid in [root, *descendants(root)]:
            f = _stat_fields(pid)
            if f:
                out[pid] = sum(int(x) for x in f[11:15]) / CLK_TCK
    return out


def system_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def wait_quiet(limit: float, max_wait: float = 180.0) -> float:
    """Wait (up to max_wait s) until the machine is quiet: busy below `limit` of one core
    in three 0.5 s samples in a row. Other sessions share this machine. Returns the wait."""
    start, calm = time.monotonic(), 0
    while time.monotonic() - start < max_wait and calm < 3:
        b0, t0 = system_busy(), time.monotonic()
        time.sleep(0.5)
        load = (system_busy() - b0) / (time.monotonic() - t0)
        calm = calm + 1 if load < limit else 0
    return time.monotonic() - start


class Procs:
    """Every child process of the benchmark: stopped in reverse order, descendants too."""

    def __init__(self) -> None:
        self.items: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with log.open("ab") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stderr=err, start_new_session=True, **kw
            )
        self.items.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        # sshd's per-connection children call setsid(): a process-group kill misses
        # them, so they are collected by parentage (and checked by start time).
        kids = [(pid, proc_start_time(pid)) for pid in descendants(proc.pid)]
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [(p, st) for p, st in kids if st is not None and proc_start_time(p) == st]
            for pid, _ in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 2
            while alive and time.monotonic() < deadline:
                time.sleep(0.05)
                alive = [(p, st) for p, st in alive if proc_start_time(p) == st]
            if not alive:
                break
        if proc.stdout:
            proc.stdout.close()
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.items)):
            with contextlib.suppress(Exception):
                self.stop(proc)


PROCS = Procs()


def wait_line(proc: subprocess.Popen[bytes], prefix: str, timeout: float) -> str:
    """The first stdout line of a role process that starts with prefix (READY ...)."""
    assert proc.stdout is not None
    deadline, buf = time.monotonic() + timeout, b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"{proc.args!r} not ready (exit {proc.poll()}): {buf!r}")


def probe_nbd(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until an NBD greeting arrives on host:port (through the tunnel if any)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 1) as s:
            s.settimeout(2)
            if s.recv(8) == b"NBDMAGIC":
                return
        time.sleep(0.05)
    raise RuntimeError(f"no NBD greeting on {host}:{port}")


class Banner:
    """A thread that greets every connection with a fixed banner: stands in for the
    node's API (reverse forward) and for a port the tunnel must refuse (PostgreSQL)."""

    def __init__(self, name: str) -> None:
        self.name, self.accepted = name, 0
        self.sock = socket.socket()
        self.sock.bind((HUB_IP, 0))
        self.sock.listen()
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.sendall(f"hello from {self.name}".encode())

    def close(self) -> None:
        self.sock.close()


def read_banner(host: str, port: int) -> bytes:
    """What a client gets on host:port: the banner, or b'' if the tunnel closed it."""
    try:
        with socket.create_connection((host, port), 3) as s:
            s.settimeout(3)
            return s.recv(100)
    except OSError as exc:
        return f"<{type(exc).__name__}>".encode()


# --------------------------------------------------------------------------- keys, certs


def make_ssh_keys(work: Path) -> None:
    for name, comment in (("host_key", "hub"), ("node_key", "node-1"), ("other_key", "intruder")):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(work / name)],
            check=True,
        )


OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = sendense-bench
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
[client]
basicConstraints = critical,CA:FALSE
extendedKeyUsage = clientAuth
"""


def make_certs(work: Path) -> tuple[Path, Path]:
    """A CA, a server and a client certificate (EC P-256), laid out as qemu's
    tls-creds-x509 (server dir) and libnbd's tls-certificates (client dir) expect."""
    cnf, sdir, cdir = work / "openssl.cnf", work / "tls-server", work / "tls-client"
    cnf.write_text(OPENSSL_CNF)
    sdir.mkdir(mode=0o700)
    cdir.mkdir(mode=0o700)

    def ssl_run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    def key(path: Path) -> None:
        ssl_run(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
        )

    ca_key, ca = work / "ca-key.pem", sdir / "ca-cert.pem"
    key(ca_key)
    ssl_run(
        "req",
        "-x509",
        "-new",
        "-key",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-config",
        str(cnf),
        "-extensions",
        "ca",
        "-subj",
        "/CN=sendense-bench-ca",
    )
    shutil.copy(ca, cdir / "ca-cert.pem")
    for d, role, cn in ((sdir, "server", "hub"), (cdir, "client", "node-1")):
        k, csr = d / f"{role}-key.pem", work / f"{role}.csr"
        key(k)
        ssl_run(
            "req",
            "-new",
            "-key",
            str(k),
            "-out",
            str(csr),
            "-config",
            str(cnf),
            "-subj",
            f"/CN={cn}",
        )
        ssl_run(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-set_serial",
            str(int.from_bytes(os.urandom(8), "big")),
            "-days",
            "2",
            "-extfile",
            str(cnf),
            "-extensions",
            role,
            "-out",
            str(d / f"{role}-cert.pem"),
        )
    return sdir, cdir


# --------------------------------------------------------------------------- OpenSSH


@dataclass
class SshEnv:
    work: Path
    port: int
    nbd_port: int
    listen_port: int  # the reverse forward's port on the hub (node API seen from the hub)
    user: str = "root"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.work / "sshd_config"

    def permitted_opens(self) -> list[str]:
        ports = sorted({*NBD_POOL, self.nbd_port, HUB_API_PORT})
        return [f"{HUB_IP}:{p}" for p in ports]

    def write(self) -> None:
        w = self.work
        opens = self.permitted_opens()
        self.config.write_text(
            "\n".join(
                [
                    f"ListenAddress {HUB_IP}:{self.port}",
                    f"HostKey {w / 'host_key'}",
                    "PidFile none",
                    f"AuthorizedKeysFile {w / 'authorized_keys'}",
                    "AuthorizedPrincipalsFile none",
                    "AuthorizedKeysCommand none",
                    f"AllowUsers {self.user}",
                    "PermitRootLogin forced-commands-only",
                    "AuthenticationMethods publickey",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "HostbasedAuthentication no",
                    "GSSAPIAuthentication no",
                    "UsePAM no",
                    "StrictModes yes",
                    # `local` alone refuses the reverse forward: `yes` + PermitOpen/PermitListen.
                    "AllowTcpForwarding yes",
                    f"PermitOpen {' '.join(opens)}",
                    f"PermitListen {HUB_IP}:{self.listen_port}",
                    "GatewayPorts no",
                    "AllowStreamLocalForwarding no",
                    "AllowAgentForwarding no",
                    "X11Forwarding no",
                    "PermitTunnel no",
                    "PermitTTY no",
                    "PermitUserRC no",
                    "PermitUserEnvironment no",
                    "ForceCommand /bin/false",
                    "ClientAliveInterval 15",
                    "ClientAliveCountMax 3",
                    "Compression no",
                    "MaxSessions 0",  # no session channels at all, forwards still work
                    "LogLevel VERBOSE",
                    "",  # no Subsystem line: sftp is refused
                ]
            )
        )
        pub = (w / "node_key.pub").read_text().split()[:2]
        options = ",".join(
            ["restrict", "port-forwarding", 'command="/bin/false"']
            + [f'permitopen="{o}"' for o in opens]
            + [f'permitlisten="{HUB_IP}:{self.listen_port}"']
        )
        (w / "authorized_keys").write_text(f"{options} {' '.join(pub)} node-1\n")
        (w / "authorized_keys").chmod(0o600)
        host = (w / "host_key.pub").read_text().split()[:2]
        other = (w / "other_key.pub").read_text().split()[:2]
        (w / "known_hosts").write_text(f"[{HUB_IP}]:{self.port} {' '.join(host)}\n")
        (w / "wrong_known_hosts").write_text(f"[{HUB_IP}]:{self.port} {' '.join(other)}\n")

    def start(self) -> None:
        # Debian's sshd (as root) needs its privilege-separation dir; systemd makes it.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        subprocess.run([SSHD, "-t", "-f", str(self.config)], check=True)
        self.proc = PROCS.start([SSHD, "-D", "-e", "-f", str(self.config)], self.work / "sshd.log")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HUB_IP, self.port), 1):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {(self.work / 'sshd.log').read_text()}")

    def ssh_argv(
        self, *extra: str, key: str = "node_key", known_hosts: str = "known_hosts"
    ) -> list[str]:
        w = self.work
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            str(w / key),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={w / known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "HostKeyAlgorithms=ssh-ed25519",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ServerAliveInterval=10",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "Compression=no",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "-o",
            "ConnectTimeout=10",
            *extra,
            f"{self.user}@{HUB_IP}",
        ]


def run_for(argv: list[str], seconds: float) -> tuple[int | None, str]:
    """Run argv; if still alive after `seconds`, report None (it kept going) and stop it."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code: int | None = proc.wait(seconds)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        out.seek(0)
        return code, out.read().decode(errors="replace").strip()


@contextlib.contextmanager
def ssh_forward(env: SshEnv, *forwards: str, **kw: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = PROCS.start(env.ssh_argv("-N", "-v", *forwards, **kw), env.work / "ssh-client.log")
    try:
        yield proc
    finally:
        PROCS.stop(proc)


def check_openssh(env: SshEnv, pg: Banner, node_api: Banner) -> dict[str, Any]:
    """The restrictions, each tried for real. True means: behaves as required."""
    r: dict[str, Any] = {}
    code, out = run_for(env.ssh_argv("id"), 10)
    r["shell_refused"] = code not in (0, None) and "uid=" not in out
    code, out = run_for(env.ssh_argv("-tt"), 10)
    r["tty_refused"] = code not in (0, None)
    code, out = run_for(env.ssh_argv("-s", "sftp"), 10)
    r["sftp_refused"] = code not in (0, None)
    code, out = run_for(env.ssh_argv("-N", key="other_key"), 10)
    r["unknown_client_key_refused"] = code == 255 and "Permission denied" in out
    code, out = run_for(env.ssh_argv("-N", known_hosts="wrong_known_hosts"), 10)
    r["wrong_host_key_refused"] = code == 255 and "Host key verification failed" in out

    p_ok, p_pg, p_lh = free_port(NODE_IP), free_port(NODE_IP), free_port(NODE_IP)
    with ssh_forward(
        env,
        "-L",
        f"{NODE_IP}:{p_ok}:{HUB_IP}:{env.nbd_port}",
        "-L",
        f"{NODE_IP}:{p_pg}:{HUB_IP}:{pg.port}",
        "-L",
        f"{NODE_IP}:{p_lh}:localhost:{env.nbd_port}",
        "-R",
        f"{HUB_IP}:{env.listen_port}:{HUB_IP}:{node_api.port}",
    ):
        probe_nbd(NODE_IP, p_ok)
        r["local_forward_to_nbd_ok"] = True
        r["forward_to_unpermitted_port_refused"] = (
            read_banner(NODE_IP, p_pg) == b"" and pg.accepted == 0
        )
        # PermitOpen compares the text: "localhost" is not "127.0.0.1".
        r["forward_to_localhost_name_refused"] = read_banner(NODE_IP, p_lh) == b""
        r["reverse_forward_ok"] = read_banner(HUB_IP, env.listen_port) == b"hello from node-api"
    # ssh -R PORT:... asks for the listen host "localhost", which PermitListen
    # 127.0.0.1:PORT does not match: the listen address must be spelled out.
    code, out = run_for(env.ssh_argv("-N", "-R", f"{env.listen_port}:{HUB_IP}:{node_api.port}"), 5)
    r["reverse_without_listen_host_refused"] = code == 255 and "forwarding failed" in out
    other = free_port()
    code, out = run_for(env.ssh_argv("-N", "-R", f"{HUB_IP}:{other}:{HUB_IP}:{node_api.port}"), 5)
    r["reverse_to_unpermitted_port_refused"] = code == 255 and "forwarding failed" in out
    return r


# --------------------------------------------------------------------------- asyncssh roles


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def role_asyncssh_server(args: argparse.Namespace) -> None:
    import asyncssh

    allowed_open = {_hostport(x) for x in args.allow_open}
    allowed_listen = {_hostport(x) for x in args.allow_listen}

    class Server(asyncssh.SSHServer):
        def connection_requested(
            self, dest_host: str, dest_port: int, _orig_host: str, _orig_port: int
        ) -> bool:
            if (dest_host, dest_port) in allowed_open:
                return True  # asyncssh opens dest_host:dest_port itself
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"{dest_host}:{dest_port} refused"
            )

        def server_requested(self, listen_host: str, listen_port: int) -> bool:
            return (listen_host, listen_port) in allowed_listen

        # session_requested: asyncssh's default refuses every session (no shell).

    await asyncssh.create_server(
        Server,
        HUB_IP,
        args.port,
        server_host_keys=[args.host_key],
        authorized_client_keys=args.authorized_keys,
        allow_pty=False,
        agent_forwarding=False,
        x11_forwarding=False,
        compression_algs=None,
        keepalive_interval=15,
        keepalive_count_max=3,
        window=args.window,
        max_pktsize=args.max_pktsize,
    )
    print("READY", flush=True)
    await asyncio.Event().wait()


async def role_asyncssh_client(args: argparse.Namespace) -> None:
    import asyncssh

    opts: dict[str, Any] = {}
    if args.cipher:
        opts["encryption_algs"] = [args.cipher]
    conn = await asyncssh.connect(
        HUB_IP,
        args.port,
        username="node",
        known_hosts=args.known_hosts,
        client_keys=[args.key],
        agent_path=None,
        config=[],
        compression_algs=None,
        keepalive_interval=10,
        keepalive_count_max=3,
        window=args.window,
        max_pktsize=args.max_pktsize,
        **opts,
    )
    for spec in args.local:
        lh, lp, dh, dp = spec.split(":")
        await conn.forward_local_port(lh, int(lp), dh, int(dp))
    cipher = conn.get_extra_info("send_cipher")
    comp = conn.get_extra_info("send_compression")
    print(f"READY cipher={cipher} compression={comp}", flush=True)
    await conn.wait_closed()
    sys.exit(1)


async def check_asyncssh(
    work: Path, port: int, nbd_port: int, listen_port: int, pg: Banner, node_api: Banner
) -> dict[str, Any]:
    import asyncssh

    def connect(key: str = "node_key", known: str = "known_hosts_asyncssh") -> Any:
        return asyncssh.connect(
            HUB_IP,
            port,
            username="node",
            known_hosts=str(work / known),
            client_keys=[str(work / key)],
            agent_path=None,
            config=[],
        )

    r: dict[str, Any] = {}
    try:
        async with connect(key="other_key"):
            r["unknown_client_key_refused"] = False
    except asyncssh.PermissionDenied:
        r["unknown_client_key_refused"] = True
    try:
        async with connect(known="wrong_known_hosts_asyncssh"):
            r["wrong_host_key_refused"] = False
    except asyncssh.HostKeyNotVerifiable:
        r["wrong_host_key_refused"] = True
    async with connect() as conn:
        try:
            await conn.run("id", check=True)
            r["shell_refused"] = False
        except asyncssh.ChannelOpenError:
            r["shell_refused"] = True
        reader, writer = await conn.open_connection(HUB_IP, nbd_port)
        r["local_forward_to_nbd_ok"] = (await reader.readexactly(8)) == b"NBDMAGIC"
        writer.close()
        for name, host, p in (
            ("forward_to_unpermitted_port_refused", HUB_IP, pg.port),
            ("forward_to_localhost_name_refused", "localhost", nbd_port),
        ):
            try:
                await conn.open_connection(host, p)
                r[name] = False
            except asyncssh.ChannelOpenError:
                r[name] = True
        r["forward_to_unpermitted_port_refused"] &= pg.accepted == 0
        await conn.forward_remote_port(HUB_IP, listen_port, HUB_IP, node_api.port)
        got = await asyncio.to_thread(read_banner, HUB_IP, listen_port)
        r["reverse_forward_ok"] = got == b"hello from node-api"
        try:
            await conn.forward_remote_port(HUB_IP, free_port(), HUB_IP, node_api.port)
            r["reverse_to_unpermitted_port_refused"] = False
        except asyncssh.ChannelListenError:
            r["reverse_to_unpermitted_port_refused"] = True
    return r


# --------------------------------------------------------------------------- TLS roles


def _tls_context(args: argparse.Namespace, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(args.cert, args.key)
    ctx.load_verify_locations(args.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual: the server demands the node's cert
    return ctx


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 20):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _splice(
    r1: asyncio.StreamReader,
    w1: asyncio.StreamWriter,
    r2: asyncio.StreamReader,
    w2: asyncio.StreamWriter,
) -> None:
    await asyncio.gather(_pump(r1, w2), _pump(r2, w1))


async def role_tls_server(args: argparse.Namespace) -> None:
    """Hub side: TLS in, plain TCP out to the one permitted target."""
    ctx = _tls_context(args, server=True)
    dest_host, dest_port = _hostport(args.dest)

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            r2, w2 = await asyncio.open_connection(dest_host, dest_port, limit=1 << 21)
        except OSError:
            w.close()
            return
        await _splice(r, w, r2, w2)

    server = await asyncio.start_server(handle, HUB_IP, args.port, ssl=ctx, limit=1 << 21)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


async def role_tls_client(args: argparse.Namespace) -> None:
    """Node side: plain listener on 127.0.0.2, one TLS connection per inbound one."""
    ctx = _tls_context(args, server=False)
    lh, lp = _hostport(args.listen)
    seen: list[str] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            r2, w2 = await asyncio.open_connection(
                HUB_IP, args.port, ssl=ctx, server_hostname=HUB_IP, limit=1 << 21
            )
        except (OSError, ssl.SSLError):
            w.close()
            return
        if not seen:
            sslobj = w2.get_extra_info("ssl_object")
            seen.append(f"{sslobj.version()} {sslobj.cipher()[0]}")
            print(f"CIPHER {seen[0]}", file=sys.stderr, flush=True)
        await _splice(r, w, r2, w2)

    server = await asyncio.start_server(handle, lh, lp, limit=1 << 21)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------- variants


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


def role_argv(role: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), role, *args]


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


def summarize(vs: list[Variant], data_bytes: int) -> dict[str, Any]:
    gib = data_bytes / (1 << 30)
    out: dict[str, Any] = {}
    direct_runs = next(v for v in vs if v.name == "direct").data.get("seconds")
    direct = statistics.median(direct_runs) if direct_runs else float("nan")

    def med(v: Variant, key: str) -> float:
        return statistics.median(v.data[key]) / gib

    plain = {v.connections: v for v in vs if v.transport == "direct" and v.data.get("seconds")}
    for v in vs:
        if not v.data.get("seconds"):
            out[v.name] = {"error": v.note}
            continue
        median_s = statistics.median(v.data["seconds"])
        out[v.name] = {
            "transport": v.transport,
            "cipher": v.data["cipher"][-1] if v.data.get("cipher") else v.cipher,
            "connections": v.connections,
            "seconds": [round(s, 2) for s in v.data["seconds"]],
            "data_MBps": round(data_bytes / median_s / 1e6),
            "ratio_vs_direct": round(direct / median_s, 2),
            "tunnel_cpu_s_per_GiB": round(med(v, "tunnel_cpu"), 2),
            "tunnel_node_cpu_s_per_GiB": round(med(v, "tunnel_node_cpu"), 2),
            "tunnel_hub_cpu_s_per_GiB": round(med(v, "tunnel_hub_cpu"), 2),
            "qemu_nbd_cpu_s_per_GiB": round(statistics.median(v.data["qemu_nbd_cpu"]) / gib, 2),
            "nbdcopy_cpu_s_per_GiB": round(statistics.median(v.data["nbdcopy_cpu"]) / gib, 2),
            "other_cpu_s_per_GiB": round(statistics.median(v.data["other_cpu"]) / gib, 2),
        }
        base = plain.get(v.connections)
        if v.tls_qemu and base is not None:
            # TLS inside nbdcopy (node) and qemu-nbd (hub): its cost is the extra CPU
            # of those two over the plain run with as many connections.
            node = med(v, "nbdcopy_cpu") - med(base, "nbdcopy_cpu")
            hub = med(v, "qemu_nbd_cpu") - med(base, "qemu_nbd_cpu")
            out[v.name].update(
                tunnel_cpu_s_per_GiB=round(node + hub, 2),
                tunnel_node_cpu_s_per_GiB=round(node, 2),
                tunnel_hub_cpu_s_per_GiB=round(hub, 2),
                tunnel_cpu_is="extra nbdcopy + qemu-nbd CPU over the plain run",
            )
        if v.note:
            out[v.name]["note"] = v.note
    return out


def print_table(table: dict[str, Any]) -> None:
    head = (
        f"{'variant':24} {'cipher':30} {'conn':>4} {'MB/s':>5} {'ratio':>5} "
        f"{'tun s/GiB':>9} {'node':>5} {'hub':>5} {'qemu':>5} {'copy':>5} "
        f"{'other':>5}"
    )
    print(head)
    for name, e in table.items():
        if "error" in e:
            print(f"{name:24} ERROR {e['error']}")
            continue
        print(
            f"{name:24} {e['cipher'][:30]:30} {e['connections']:>4} {e['data_MBps']:>5} "
            f"{e['ratio_vs_direct']:>5.2f} {e['tunnel_cpu_s_per_GiB']:>9.2f} "
            f"{e['tunnel_node_cpu_s_per_GiB']:>5.2f} {e['tunnel_hub_cpu_s_per_GiB']:>5.2f} "
            f"{e['qemu_nbd_cpu_s_per_GiB']:>5.2f} {e['nbdcopy_cpu_s_per_GiB']:>5.2f} "
            f"{e['other_cpu_s_per_GiB']:>5.2f}"
        )
    print("CPU columns: seconds per GiB of data; node/hub = the tunnel's two ends")


def version(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    out = (r.stdout or r.stderr).strip()
    return out.splitlines()[0] if out else "unknown"


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def bench_main(args: argparse.Namespace) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    try:
        import asyncssh  # noqa: F401

        asyncssh_ok = True
    except ImportError:
        asyncssh_ok = False
        print("asyncssh is not installed: its variants are skipped", file=sys.stderr)
    size = int(args.data_gib * 2 * (1 << 30)) // (2 * EXTENT) * (2 * EXTENT)
    # StrictModes checks every directory up to / : a temp dir under /tmp (1777)
    # fails it, so keys and configs live under a root-owned 0755 parent (/run);
    # the images go to --dir (default: the temp dir), on a disk that takes O_DIRECT.
    work = Path(tempfile.mkdtemp(prefix="sendense-tunnel-keys-", dir="/run"))
    data = Path(tempfile.mkdtemp(prefix="sendense-tunnel-bench-", dir=args.dir))
    pg, node_api = Banner("postgres"), Banner("node-api")
    checks: dict[str, Any] = {}
    try:
        make_ssh_keys(work)
        nbd_port = free_port()
        ssh = SshEnv(work, free_port(), nbd_port, free_port())
        ssh.write()
        host = (work / "host_key.pub").read_text().split()[:2]
        other = (work / "other_key.pub").read_text().split()[:2]
        node_pub = (work / "node_key.pub").read_text().split()[:2]
        b = Bench(
            work,
            data,
            nbd_port,
            ssh,
            free_port(),
            free_port(),
            free_port(),
            *make_certs(work),
            asyncssh_ok,
        )
        (work / "known_hosts_asyncssh").write_text(
            "".join(
                f"[{HUB_IP}]:{p} {' '.join(host)}\n"
                for p in (b.asyncssh_port, b.asyncssh_tuned_port)
            )
        )
        (work / "wrong_known_hosts_asyncssh").write_text(
            f"[{HUB_IP}]:{b.asyncssh_port} {' '.join(other)}\n"
        )
        # asyncssh ignores `restrict` (and so `port-forwarding`): it honours the
        # `no-*` flags and `permitopen`; its server callbacks enforce the rest.
        opens = ",".join(f'permitopen="{HUB_IP}:{p}"' for p in (nbd_port, HUB_API_PORT))
        (work / "authorized_keys_asyncssh").write_text(
            f"no-pty,no-agent-forwarding,no-X11-forwarding,{opens} {' '.join(node_pub)} node-1\n"
        )
        start_servers(b)

        from sendense.nbd.qemu_img import QemuImg
        from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd

        check_img = data / "check.qcow2"
        QemuImg().create(check_img, 1 << 30)
        with QemuNbd(ExportSpec(check_img, nbd_port, "disk"), log_path=work / "qemu-nbd.log"):
            checks["openssh"] = check_openssh(ssh, pg, node_api)
            if asyncssh_ok:
                checks["asyncssh"] = asyncio.run(
                    check_asyncssh(work, b.asyncssh_port, nbd_port, ssh.listen_port, pg, node_api)
                )
        check_img.unlink()
        print(json.dumps(checks, indent=1), file=sys.stderr)

        source = data / "source.raw"
        data_bytes = make_source(source, size)
        only = set(args.only.split(",")) if args.only else None
        vs = variants(asyncssh_ok, only)
        disturbed: list[str] = []
        for run in range(args.runs):
            for v in vs:
                if v.note.startswith("failed"):
                    continue
                try:
                    for attempt in range(3):
                        waited = wait_quiet(args.quiet)
                        res = one_run(b, v, source, size, verify=run == 0 and attempt == 0)
                        # Busy time beyond ours (and the usual softirq) means another
                        # session ran meanwhile: this run says nothing, run it again.
                        if res["other_cpu"] <= 0.4 * res["seconds"]:
                            break
                        disturbed.append(f"{v.name} run {run + 1}: other {res['other_cpu']:.1f} s")
                        print(f"{v.name}: disturbed ({res['other_cpu']:.1f} s)", file=sys.stderr)
                except Exception as exc:  # one broken transport must not sink the rest
                    v.note = f"failed: {exc}"
                    print(f"{v.name}: {v.note}", file=sys.stderr)
                    continue
                for k, val in res.items():
                    v.data.setdefault(k, []).append(val)
                print(
                    f"run {run + 1} {v.name:24} {res['seconds']:6.2f} s "
                    f"{data_bytes / res['seconds'] / 1e6:6.0f} MB/s tunnel cpu "
                    f"{res['tunnel_cpu']:5.2f} s (node {res['tunnel_node_cpu']:5.2f} s, hub "
                    f"{res['tunnel_hub_cpu']:5.2f} s) qemu-nbd {res['qemu_nbd_cpu']:5.2f} s "
                    f"nbdcopy {res['nbdcopy_cpu']:5.2f} s other {res['other_cpu']:5.2f} s "
                    f"(waited {waited:.0f} s for quiet) [{res['cipher']}]",
                    file=sys.stderr,
                )
        table = summarize(vs, data_bytes)
    finally:
        PROCS.stop_all()
        pg.close()
        node_api.close()
        shutil.rmtree(data, ignore_errors=True)
        if args.keep:
            print(f"kept {work} (keys, configs, logs)", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "data_bytes": data_bytes,
        "holes_bytes": size - data_bytes,
        "runs": args.runs,
        "nbdcopy_argv": NBDCOPY,
        "checks": checks,
        "variants": table,
        "disturbed_runs_repeated": disturbed,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "openssh": version(["ssh", "-V"]),
            "openssl": ssl.OPENSSL_VERSION,
            "asyncssh": _asyncssh_version(),
            "qemu_nbd": version(["qemu-nbd", "--version"]),
            "nbdcopy": version(["nbdcopy", "--version"]),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print_table(table)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _asyncssh_version() -> str:
    try:
        import asyncssh

        return str(asyncssh.__version__)
    except ImportError:
        return "not installed"


ROLES: dict[str, Callable[[argparse.Namespace], Any]] = {
    "asyncssh-server": role_asyncssh_server,
    "asyncssh-client": role_asyncssh_client,
    "tls-server": role_tls_server,
    "tls-client": role_tls_client,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ROLES:
        p = argparse.ArgumentParser(prog=argv[0])
        p.add_argument("--port", type=int, required=True)
        for opt in (
            "--host-key",
            "--authorized-keys",
            "--known-hosts",
            "--key",
            "--cert",
            "--ca",
            "--dest",
            "--listen",
            "--cipher",
        ):
            p.add_argument(opt)
        p.add_argument("--allow-open", nargs="*", default=[])
        p.add_argument("--allow-listen", nargs="*", default=[])
        p.add_argument("--local", action="append", default=[])
        p.add_argument("--window", type=int, default=2 << 20)  # asyncssh's defaults
        p.add_argument("--max-pktsize", type=int, default=32768)
        ns = p.parse_args(argv[1:])
        signal.signal(signal.SIGTERM, _raise_exit)
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            asyncio.run(ROLES[argv[0]](ns))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-gib", type=float, default=2.0, help="GiB of data (and of holes)")
    parser.add_argument("--only", help="comma-separated variant names (direct always runs)")
    parser.add_argument("--dir", type=Path, help="parent of the image scratch dir")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.2,
        help="before each run, wait until the machine's busy cores are below this",
    )
    parser.add_argument("--keep", action="store_true", help="keep keys, configs and logs")
    return bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
