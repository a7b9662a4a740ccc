"""The hub as a real process (`sendense hub serve`), for crash and CLI tests.

It serves HTTPS with the certificate it makes at first start; clients verify it
with `verify` (the certificate as the only CA) and the CLI with `cli_env`."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sendense.common.tls import ca_context, cert_file_fingerprint
from tests.rig.accounts import remove_group, unique_group
from tests.rig.net import free_port, free_port_range
from tests.rig.procs import stop

# Every hub a test made: its node users and group go when the test ends
# (conftest's `node_accounts_removed`), whatever the outcome.
CREATED: list[HubProcess] = []


class HubProcess:
    def __init__(
        self,
        data_dir: Path,
        database_url: str,
        pool: int = 8,
        *,
        tls: bool = True,
        host: str = "127.0.0.1",
        repository_roots: Path | str | None = None,
    ) -> None:
        """`host`: where the API and the tunnel's sshd listen (`::1`: IPv6).
        Repositories may be anywhere under `repository_roots` (by default the data
        directory's parent: a test's tmp_path, where `repo_dir` is)."""
        self.data_dir = data_dir
        self.host = host
        self.port = free_port()
        self.tls = tls
        self.listen = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.listen}"
        self.tunnel_port = free_port()
        rev_first, rev_last = free_port_range(4)
        self.tunnel_group = unique_group()
        first, last = free_port_range(pool)
        self.env = {
            **os.environ,
            "SENDENSE_HUB_DATABASE_URL": database_url,
            "SENDENSE_HUB_NBD_PORT_MIN": str(first),
            "SENDENSE_HUB_NBD_PORT_MAX": str(last),
            "SENDENSE_HUB_MIN_FREE_BYTES": "0",
            "SENDENSE_HUB_TUNNEL_PORT": str(self.tunnel_port),
            "SENDENSE_HUB_TUNNEL_HOST": host,
            "SENDENSE_HUB_REVERSE_PORT_MIN": str(rev_first),
            "SENDENSE_HUB_REVERSE_PORT_MAX": str(rev_last),
            # hub and node share this machine: the node's end of the tunnel
            # shows the hub's ports on 127.0.0.2
            "SENDENSE_HUB_TARGETS_HOST": "127.0.0.2",
            "SENDENSE_HUB_TLS": "true" if tls else "false",
            "SENDENSE_HUB_TUNNEL_GROUP": self.tunnel_group,
            "SENDENSE_HUB_REPOSITORY_ROOTS": str(repository_roots or data_dir.parent),
        }
        CREATED.append(self)
        self.log = data_dir.parent / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "sendense",
            "hub",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.listen,
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                if not self.tls or self.cert.exists():
                    health = httpx.get(f"{self.url}/api/v1/health", timeout=1, verify=self.verify)
                    if health.status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"hub did not answer: {self.log.read_text()}")

    @property
    def cert(self) -> Path:
        """The operator's certificate if the env names one, else the one the hub made
        at first start (data_dir/tls)."""
        given = self.env.get("SENDENSE_HUB_TLS_CERT")
        return Path(given) if given else self.data_dir / "tls" / "hub.crt"

    @property
    def cert_sha256(self) -> str:
        return cert_file_fingerprint(self.cert)

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """For httpx: trust exactly the hub's certificate (host name 127.0.0.1 checked)."""
        return ca_context(self.cert) if self.tls else False

    def client(self, token: str | None = None, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=self.verify)

    def cli_env(self, token: str) -> dict[str, str]:
        """What `sendense ...` needs to reach this hub: URL, token, the certificate pin."""
        env = {"SENDENSE_HUB_URL": self.url, "SENDENSE_TOKEN": token}
        if self.tls:
            env["SENDENSE_HUB_FINGERPRINT"] = self.cert_sha256
        return env

    def initial_token(self) -> str:
        return (self.data_dir / "initial-api-token").read_text().strip()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=20)

    def remove_accounts(self) -> None:
        """The system users and group this hub made for its nodes (after `stop`)."""
        remove_group(self.tunnel_group, self.data_dir)
