"""A hub and one enrolled node, as real processes (hub with its sshd, node API,
node tunnel)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx

from sendense.common.config import load_settings
from sendense.hub.config import HubSettings
from sendense.hub.service import Hub
from tests.rig.cli import sendense
from tests.rig.hub import HubProcess
from tests.rig.node import NodeProcesses
from tests.rig.node_tasks import unique
from tests.rig.tasks import wait_task
from tests.rig.vcsim import Vcsim


class Site:
    """A hub and one enrolled node, as processes."""

    def __init__(
        self,
        tmp_path: Path,
        hub_settings: dict[str, str] | None = None,
        *,
        database_url: str | None = None,
        hub_host: str = "127.0.0.1",
        repository_roots: Path | str | None = None,
        **node_settings: str,
    ) -> None:
        """Repositories may be made under `repository_roots` (default: `tmp_path`)."""
        url = database_url or f"sqlite:///{tmp_path / 'hub.db'}"  # the default: SQLite
        self.hub = HubProcess(
            tmp_path / "hub", url, host=hub_host, repository_roots=repository_roots
        )
        self.hub.env.update(
            {f"SENDENSE_HUB_{k.upper()}": v for k, v in (hub_settings or {}).items()}
        )
        self.node = NodeProcesses(tmp_path / "node", **node_settings)
        self.name = unique("node")

    def start(self) -> None:
        self.hub.start()
        self.token = self.hub.initial_token()
        self.api = self.hub.client(self.token)

    def add_vcenter(self, vcsim: Vcsim) -> None:
        env = self.cli_env() | {"SENDENSE_VCENTER_PASSWORD": vcsim.password}
        added = sendense(
            "vcenter",
            "add",
            vcsim.host,
            "--user",
            vcsim.username,
            "--node",
            self.name,
            "--thumbprint",
            vcsim.thumbprint,
            env=env,
        )
        assert added.returncode == 0, added.stderr

    def wait_job(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        return wait_task(self.api, job_id, timeout, poll=0.2)

    def cli_env(self) -> dict[str, str]:
        return self.hub.cli_env(self.token)

    def pair(self) -> str:
        """A pairing code; the pins `hub pair` printed with it are kept in
        `hub_fingerprint` (tunnel host key) and `hub_cert_sha256` (API certificate)."""
        done = sendense("hub", "pair", "--data-dir", str(self.hub.data_dir), env=self.hub.env)
        assert done.returncode == 0, done.stderr
        self.hub_fingerprint = done.stderr.split("--hub-fingerprint", 1)[1].split()[0]
        self.hub_cert_sha256 = done.stderr.split("--hub-cert-sha256", 1)[1].split()[0]
        return done.stdout.strip()

    def enroll(
        self, code: str, nodes: NodeProcesses | None = None, name: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`node enroll` with the pins of the last `pair()`."""
        return (nodes or self.node).enroll(
            self.hub.url, code, name or self.name, self.hub_fingerprint, self.hub_cert_sha256
        )

    def enroll_and_connect(self) -> str:
        """Pair, enroll and connect the node; the pairing code it used."""
        code = self.pair()
        enrolled = self.enroll(code)
        assert enrolled.returncode == 0, enrolled.stderr
        self.node.start_serve()
        self.node.start_tunnel()
        self.node.wait_tunnel("connected")
        return code

    def prepare(self, vcsim: Vcsim | None, repo: Path) -> None:
        """After `start`: the node enrolled and connected, the simulator's vCenter
        registered (when given), `repo` made and added as a repository."""
        self.enroll_and_connect()
        if vcsim is not None:
            self.add_vcenter(vcsim)
        repo.mkdir(parents=True, exist_ok=True)
        added = self.api.post("/api/v1/repositories", json={"path": str(repo)})
        assert added.status_code == 201, added.text

    def hub_service(self) -> Hub:
        """The hub's services in this process (same database and data directory)."""
        settings = load_settings(
            HubSettings,
            data_dir=self.hub.data_dir,
            database_url=self.hub.env["SENDENSE_HUB_DATABASE_URL"],
            tunnel_group=self.hub.tunnel_group,
            repository_roots=self.hub.env["SENDENSE_HUB_REPOSITORY_ROOTS"],
        )
        return Hub.open(settings, migrate=False)

    def node_api(self) -> httpx.Client:
        """The node's API as the hub reaches it: its reverse port, its token."""
        hub = self.hub_service()
        try:
            node = hub.nodes.get(self.name)
            token = hub.nodes.api_token(self.name)
        finally:
            hub.db.dispose()
        return httpx.Client(
            base_url=f"http://127.0.0.1:{node.reverse_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )

    def stop(self) -> None:
        self.node.stop()
        self.hub.stop()
        self.hub.remove_accounts()
        if hasattr(self, "api"):
            self.api.close()
