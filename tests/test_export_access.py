"""Backup write exports are reachable only by the job's own node (issue 12, point 2).

Each attacker is a real client: `nbdinfo --list` (NBD_OPT_LIST, then the export)
run as `nobody` on the hub and on the node, and another enrolled node's own tunnel.
The job's node reaches the same export through its tunnel in each test, so a
refusal is the permission, not a broken path. The directories above the sockets
are opened up (0711) as an operator might: only the export's own directory and
socket keep the attacker out.
"""

from __future__ import annotations

import asyncio
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendense.common.config import load_settings
from sendense.common.targets import NbdTarget, parse_targets
from sendense.hub.backup.disks import DiskSpec
from sendense.hub.config import HubSettings
from sendense.hub.nodes.nbd_relay import write_relay
from sendense.hub.nodes.registry import NodeInfo
from sendense.hub.repository.logins import node_login
from sendense.hub.service import Hub
from sendense.nbd.client import NbdClient
from sendense.nbd.errors import NbdConnectError
from sendense.node.forwards import HubExports, session_argv, socket_uri
from tests.rig.net import free_port_range
from tests.rig.node import NodeProcesses
from tests.rig.procs import pids_with
from tests.rig.site import Site

MiB = 1 << 20
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A directory outside pytest's own 0700 one, that any user may enter."""
    root = Path(tempfile.mkdtemp(prefix="sendense-x-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_user(node: NodeInfo, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`argv` run as a node's system user, with its groups, as its sshd session is."""
    assert node.system_uid is not None
    entry = pwd.getpwuid(node.system_uid)
    ids = [f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups"]
    return subprocess.run(
        ["setpriv", *ids, *argv], capture_output=True, text=True, timeout=30, check=False
    )


def nbdinfo_as_nobody(uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AS_NOBODY, "nbdinfo", "--list", uri],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_refused(uri: str, export: str) -> None:
    done = nbdinfo_as_nobody(uri)
    assert done.returncode != 0, done.stdout
    assert export not in done.stdout


async def size_of(uri: str) -> int:
    client = await NbdClient.connect(uri, timeout=20)
    try:
        return client.info.size
    finally:
        await client.close()


def test_a_local_user_on_the_hub_cannot_reach_a_backup_export(open_root: Path) -> None:
    first, last = free_port_range(4)
    settings = load_settings(
        HubSettings,
        data_dir=open_root / "hub",
        database_url=f"sqlite:///{open_root / 'hub.db'}",
        nbd_port_min=first,
        nbd_port_max=last,
        min_free_bytes=0,
        repository_roots=[open_root],
    )
    hub = Hub.open(settings)
    try:
        (open_root / "repo").mkdir()
        hub.repos.add(str(open_root / "repo"))
        settings.data_dir.chmod(0o711)
        prepared = hub.ledger.prepare("vm", [DiskSpec(2000, 4 * MiB)])
        target = prepared.disks[0].target
        local = hub.exports.uri(target.port, target.export)
        assert asyncio.run(size_of(local)) == 4 * MiB  # the hub itself reaches it
        assert_refused(local, target.export)
        assert_refused(f"nbd://127.0.0.1:{target.port}", target.export)
    finally:
        hub.reconcile("test ended")
        hub.close()


@pytest.fixture
def site(open_root: Path) -> Iterator[Site]:
    site = Site(open_root)
    try:
        site.start()
        site.enroll_and_connect()
        (open_root / "repo").mkdir()
        site.api.post("/api/v1/repositories", json={"path": str(open_root / "repo")})
        yield site
    finally:
        site.stop()
    assert pids_with(str(open_root), name="ssh") == []


def test_a_local_user_on_the_node_cannot_reach_its_export(site: Site) -> None:
    disks = [{"key": 2000, "capacity_bytes": 4 * MiB}]
    job = site.api.post("/api/v1/jobs", json={"vm_name": "vm", "disks": disks})
    assert job.status_code == 201, job.text
    targets = parse_targets(job.json()["nbd_targets"])
    port, export = targets[0].port, targets[0].export
    for directory in (site.node.data_dir, site.node.data_dir / "tunnel"):
        directory.chmod(0o711)

    async def attempt() -> None:
        exports = HubExports(site.node.data_dir)
        uris = await exports.open(targets)
        try:
            assert await size_of(uris[2000]) == 4 * MiB  # the node's service user
            for uri in (uris[2000], f"nbd://127.0.0.2:{port}"):  # its socket, the old forward
                done = await asyncio.to_thread(nbdinfo_as_nobody, uri)
                assert done.returncode != 0, done.stdout
                assert export not in done.stdout
        finally:
            await exports.close(targets)

    asyncio.run(attempt())


async def read_size(data_dir: Path, target: NbdTarget) -> int:
    """The export's size as the node at `data_dir` reads it through its own tunnel."""
    exports = HubExports(data_dir)
    uris = await exports.open([target])
    try:
        return await size_of(uris[target.disk_key])
    finally:
        await exports.close([target])


def test_another_enrolled_node_cannot_reach_a_nodes_export(site: Site) -> None:
    other = NodeProcesses(site.hub.data_dir.parent / "b" / "node")
    other.data_dir.parent.mkdir()
    code = site.pair()
    pins = (site.hub_fingerprint, site.hub_cert_sha256)
    # Its own end of its tunnel: 127.0.0.2 is the first node's.
    enrolled = other.enroll(site.hub.url, code, "other", *pins, "--local-address", "127.0.0.3")
    assert enrolled.returncode == 0, enrolled.stderr
    hub = site.hub_service()
    try:
        other.start_tunnel()
        other.wait_tunnel("connected")
        node = hub.nodes.get(site.name)
        prepared = hub.ledger.prepare("vm", [DiskSpec(2000, 4 * MiB)], node=node)
        target = prepared.disks[0].target
        mine = NbdTarget(2000, "127.0.0.2", target.port, target.export)
        assert asyncio.run(read_size(site.node.data_dir, mine)) == 4 * MiB
        theirs = NbdTarget(2000, "127.0.0.3", target.port, target.export)
        with pytest.raises(NbdConnectError):
            asyncio.run(read_size(other.data_dir, theirs))
        # The same session opened by hand through the other node's tunnel.
        near, far = socket.socketpair()
        with near:
            with far:
                done = subprocess.run(
                    session_argv(other.data_dir, target.port),
                    stdin=far.fileno(),
                    stdout=far.fileno(),
                    stderr=subprocess.PIPE,
                    text=True,
                    timeout=30,
                    check=False,
                )
            near.settimeout(5)
            assert near.recv(8) == b""  # not a byte of an NBD greeting
        assert "no export of this node" in done.stderr
        # Past its relay, as its own system user: the first node's directory is closed.
        path = hub.exports.socket_path(node_login(node), target.port)
        attempt = as_user(hub.nodes.get("other"), ["nbdinfo", "--list", socket_uri(path, "")])
        assert attempt.returncode != 0, attempt.stdout
        assert "Permission denied" in attempt.stderr
        assert target.export not in attempt.stdout
        hub.ledger.fail(prepared.job_id, "test ended")
    finally:
        other.stop()
        hub.exports.stop_all()  # not hub.close(): the hub process owns the tunnel
        hub.db.dispose()


@pytest.mark.parametrize(
    "command",
    [
        "",
        "nbd",
        "nbd ",
        "nbd 1;id",
        "nbd ../1",
        "nbd 1 2",
        "nbd  1",
        "nbd 123456",
        "nbd 1\nid",
        "nbd 1\n",
        "x",
        "nbd -1",
        "nbd $(id)",
    ],
)
def test_the_relay_takes_nothing_but_nbd_and_a_port(tmp_path: Path, command: str) -> None:
    relay = write_relay(tmp_path)
    done = subprocess.run(
        ["/bin/sh", str(relay), str(tmp_path)],
        env={"SSH_ORIGINAL_COMMAND": command, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == "sendense: expected `nbd PORT`\n"


def test_the_relay_names_a_missing_export(tmp_path: Path) -> None:
    relay = write_relay(tmp_path)
    assert relay.stat().st_mode & 0o777 == 0o755
    done = subprocess.run(
        ["/bin/sh", str(relay), str(tmp_path)],
        env={"SSH_ORIGINAL_COMMAND": "nbd 10100", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert (done.returncode, done.stderr) == (1, "sendense: no export of this node on port 10100\n")
