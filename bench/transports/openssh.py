"""The OpenSSH transport: a private sshd restricted as the hub's (its config,
authorized_keys and known_hosts), the node's `ssh -L` forward, and the checks
that its restrictions hold."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transports.loopback import (
    HUB_API_PORT,
    HUB_IP,
    NBD_POOL,
    NODE_IP,
    Banner,
    free_port,
    probe_nbd,
    read_banner,
)
from transports.processes import PROCS

SSHD = "/usr/sbin/sshd"  # sshd refuses to start unless run by its absolute path


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
