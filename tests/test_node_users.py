"""Each node logs in to the hub's tunnel as its own unprivileged system user, one
key belongs to one node, enrollment proves the node holds its private key, and an
IPv6 hub works (issue 12, point 6). Real hub, sshd, ssh and system users."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from sendense.common.processes import listener_pid
from sendense.common.sshkeys import enrollment_challenge, sign
from sendense.hub.db.models import Node
from sendense.hub.nodes.accounts import NodeAccounts, node_user_name
from sendense.hub.nodes.tunnel_sshd import export_socket_root
from sendense.node.forwards import session_argv
from tests.rig.accounts import users_of
from tests.rig.cli import sendense
from tests.rig.node import NodeProcesses
from tests.rig.procs import wait_gone
from tests.rig.site import Site

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making system users needs root")


@pytest.fixture
def site(bare_site: Site) -> Site:
    return bare_site


def node_row(site: Site, name: str) -> dict[str, Any]:
    nodes = {n["name"]: n for n in site.api.get("/api/v1/nodes").json()}
    row: dict[str, Any] = nodes[name]
    return row


def uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def pids_of(uid: int) -> list[int]:
    """Live processes (not zombies) running as `uid`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and uids(int(entry.name))[0] == uid:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def ssh_as(
    site: Site, user: str, key: Path, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    """Log in and hold no forward: a login that works ends at once (`-N` would wait,
    so ask for `true`: the key's forced command, the NBD relay, refuses it)."""
    tunnel = site.node.data_dir / "tunnel"
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(site.hub.tunnel_port),
            "-i",
            str(key),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={tunnel / 'known_hosts'}",
            "-o",
            "ConnectTimeout=5",
            "-v",
            f"{user}@127.0.0.1",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def authenticated(result: subprocess.CompletedProcess[str]) -> bool:
    return "Authenticated to" in result.stderr


def test_a_node_logs_in_as_its_own_user_and_no_other_node_can(site: Site, tmp_path: Path) -> None:
    site.enroll_and_connect()
    first = node_row(site, site.name)
    user, uid = first["system_user"], first["system_uid"]
    assert user == node_user_name(first["id"])
    entry = pwd.getpwnam(user)
    assert entry.pw_uid == uid != 0
    assert entry.pw_shell == "/bin/sh"  # sshd runs the forced relay with it
    assert entry.pw_dir == "/nonexistent"
    config = json.loads((site.node.data_dir / "tunnel" / "tunnel.json").read_text())
    assert config["tunnel_user"] == user

    # The process that holds the node's reverse forward: its session, as its user.
    listener = listener_pid("127.0.0.1", first["reverse_port"])
    assert listener is not None
    assert uids(listener) == [uid] * 4
    assert (
        site.hub.data_dir.joinpath("tunnel", "sshd_config").read_text().count("PermitRootLogin no")
    )

    other = NodeProcesses(tmp_path / "node2")
    enrolled = site.enroll(site.pair(), other, "second")
    assert enrolled.returncode == 0, enrolled.stderr
    second = node_row(site, "second")
    assert second["system_user"] != user
    assert second["system_uid"] not in (uid, 0)

    own_key = site.node.data_dir / "tunnel" / "id_ed25519"
    other_key = other.data_dir / "tunnel" / "id_ed25519"
    logged_in = ssh_as(site, user, own_key)
    assert authenticated(logged_in)
    assert logged_in.returncode != 0  # `true` never ran: only `nbd PORT` does
    assert "expected `nbd PORT`" in logged_in.stderr
    assert authenticated(ssh_as(site, second["system_user"], other_key))
    for login, key in ((user, other_key), (second["system_user"], own_key), ("root", own_key)):
        refused = ssh_as(site, login, key)
        assert not authenticated(refused), (login, refused.stderr[-500:])
        assert "Permission denied" in refused.stderr


def post_enroll(site: Site, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{site.hub.url}/api/v1/nodes/enroll", json=body, timeout=30, verify=site.hub.verify
    )


def enrollment(
    site: Site, code: str, name: str, key: Path, signer: Path | None = None
) -> dict[str, Any]:
    """An enrollment request for `key`'s public half, signed by `signer` (the key's
    own private half unless given)."""
    public = key.with_name(key.name + ".pub").read_text().strip()
    challenge = enrollment_challenge(code, name, public, site.hub.cert_sha256)
    return {
        "code": code,
        "node_name": name,
        "public_key": public,
        "node_api_token": "sdn_" + "x" * 40,
        "signature": sign(signer or key, challenge),
    }


def new_key(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def test_a_key_enrolled_already_is_refused(site: Site) -> None:
    code = site.pair()
    assert site.enroll(code).returncode == 0
    key = site.node.data_dir / "tunnel" / "id_ed25519"

    again = post_enroll(site, enrollment(site, site.pair(), "copycat", key))
    assert again.status_code == 409, again.text
    assert "belongs to the node" in again.json()["message"]

    assert sendense("nodes", "revoke", site.name, env=site.cli_env()).returncode == 0
    after = post_enroll(site, enrollment(site, site.pair(), "copycat", key))
    assert after.status_code == 409, after.text
    assert "revoked node" in after.json()["message"]
    assert [n["name"] for n in site.api.get("/api/v1/nodes").json()] == [site.name]

    # The database refuses it too, whatever the code above checks.
    hub = site.hub_service()
    try:
        fingerprint = node_row(site, site.name)["key_fingerprint"]
        with pytest.raises(IntegrityError), hub.db.session() as s:
            s.add(Node(name="sneaky", public_key="x", key_fingerprint=fingerprint))
    finally:
        hub.db.dispose()


def test_an_enrollment_not_signed_by_the_nodes_key_is_refused(site: Site, tmp_path: Path) -> None:
    """A node that copied another's public key cannot sign with its private key."""
    code = site.pair()
    victim = new_key(tmp_path / "victim")
    forger = new_key(tmp_path / "forger")
    forged = post_enroll(site, enrollment(site, code, "forged", victim, signer=forger))
    assert forged.status_code == 401, forged.text
    assert "signature does not match" in forged.json()["message"]

    unsigned = enrollment(site, code, "forged", victim)
    del unsigned["signature"]
    missing = post_enroll(site, unsigned)
    assert missing.status_code == 401, missing.text
    assert "no signature" in missing.json()["message"]

    # Signed for another name (a replay of someone's enrollment): refused as well.
    replayed = enrollment(site, code, "forged", victim) | {"node_name": "other"}
    assert post_enroll(site, replayed).status_code == 401

    assert site.api.get("/api/v1/nodes").json() == []
    assert users_of(site.hub.tunnel_group) == []
    # None of that spent the code: the real node enrolls with it.
    good = post_enroll(site, enrollment(site, code, "forged", victim))
    assert good.status_code == 201, good.text


def test_revoking_a_node_removes_its_user_and_ends_its_sessions(site: Site) -> None:
    site.enroll_and_connect()
    row = node_row(site, site.name)
    user, uid = row["system_user"], row["system_uid"]
    keys = next(Path("/run/sendense").glob(f"*/{user}"))
    assert keys.stat().st_uid == uid
    assert keys.stat().st_mode & 0o777 == 0o600

    assert sendense("nodes", "revoke", site.name, env=site.cli_env()).returncode == 0
    with pytest.raises(KeyError):
        pwd.getpwnam(user)
    assert not keys.exists()
    status = site.node.wait_tunnel("reconnecting", timeout=30, restarts=2)
    assert "denied" in str(status.get("last_error"))
    assert wait_gone(pids_of(uid)) == []
    assert node_row(site, site.name)["system_uid"] is None


def test_a_restarting_hub_removes_the_users_of_nodes_revoked_or_gone(site: Site) -> None:
    """A hub killed between recording a user and enrolling its node, or between
    revoking a node and removing its user: its next start removes those users, and
    no user it did not record."""
    site.enroll_and_connect()
    kept = node_row(site, site.name)
    other = NodeProcesses(site.node.data_dir.parent / "node2")
    assert site.enroll(site.pair(), other, "revoked-in-a-crash").returncode == 0
    revoked = node_row(site, "revoked-in-a-crash")
    site.hub.kill9()

    hub = site.hub_service()
    try:
        with hub.db.session() as s:  # the revocation committed, the hub died before userdel
            s.execute(update(Node).where(Node.name == revoked["name"]).values(revoked=True))
        accounts = NodeAccounts(hub.db, site.hub.tunnel_group)
        orphan = node_user_name("f" * 32)  # recorded and made; its node never committed
        accounts.ensure("f" * 32, orphan)
    finally:
        hub.db.dispose()
    stranger = "sdt-stranger-" + os.urandom(3).hex()  # in the group, never recorded
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "-g", site.hub.tunnel_group, stranger],
        check=True,
    )
    assert {revoked["system_user"], orphan, stranger} <= {
        u.pw_name for u in users_of(site.hub.tunnel_group)
    }

    site.hub.start()
    left = {u.pw_name for u in users_of(site.hub.tunnel_group)}
    assert left == {kept["system_user"], stranger}
    assert site.node.wait_tunnel("connected", timeout=60, restarts=1)["state"] == "connected"
    assert node_row(site, site.name)["system_uid"] == pwd.getpwnam(kept["system_user"]).pw_uid


def test_an_ipv6_hub_enrolls_and_carries_the_tunnel(tmp_path: Path) -> None:
    site = Site(tmp_path, hub_host="::1")
    try:
        site.start()
        assert site.hub.url.startswith("https://[::1]:")
        code = site.pair()
        enrolled = site.node.enroll(
            site.hub.url, code, site.name, site.hub_fingerprint, site.hub_cert_sha256
        )
        assert enrolled.returncode == 0, enrolled.stderr
        tunnel = site.node.data_dir / "tunnel"
        assert json.loads((tunnel / "tunnel.json").read_text())["hub_host"] == "::1"
        known = (tunnel / "known_hosts").read_text()
        assert known.startswith(f"[::1]:{site.hub.tunnel_port} ssh-ed25519 ")
        sshd_config = (site.hub.data_dir / "tunnel" / "sshd_config").read_text()
        assert f"ListenAddress [::1]:{site.hub.tunnel_port}" in sshd_config

        site.node.start_serve()
        site.node.start_tunnel()
        site.node.wait_tunnel("connected")
        # Both ways through the tunnel: the node's API from the hub's end, and an
        # NBD session of the node's (its relay, as its user) to a socket in its
        # export directory on the hub.
        with site.node_api() as node_api:
            jobs = node_api.get("/api/v1/jobs")
        assert jobs.status_code == 200, jobs.text
        pool_port = json.loads((tunnel / "tunnel.json").read_text())["nbd_port_min"]
        row = node_row(site, site.name)
        entry = pwd.getpwuid(row["system_uid"])
        hub_id = (site.hub.data_dir / "hub-id").read_text().strip()
        directory = export_socket_root(hub_id, site.hub.data_dir) / row["system_user"]
        directory.mkdir(mode=0o700)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(directory / f"{pool_port}.sock"))
            os.chown(directory / f"{pool_port}.sock", entry.pw_uid, entry.pw_gid)
            server.listen(1)
            server.settimeout(20)
            near, far = socket.socketpair()
            with near, far:
                session = subprocess.Popen(
                    session_argv(site.node.data_dir, pool_port),
                    stdin=far.fileno(),
                    stdout=far.fileno(),
                )
                far.close()
                near.sendall(b"through the tunnel")
                served, _ = server.accept()
                with served:
                    served.settimeout(10)
                    assert served.recv(64) == b"through the tunnel"
                    served.sendall(b"and back")
                    near.settimeout(10)
                    assert near.recv(64) == b"and back"
            session.wait(20)
    finally:
        site.stop()


def test_the_pairing_code_is_not_in_argv(site: Site) -> None:
    code = site.pair()
    seen: list[bytes] = []
    node = site.node
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sendense",
            "node",
            "enroll",
            "--hub",
            site.hub.url,
            "--name",
            site.name,
            "--hub-fingerprint",
            site.hub_fingerprint,
            "--hub-cert-sha256",
            site.hub_cert_sha256,
            "--data-dir",
            str(node.data_dir),
        ],
        env=node.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None
        proc.stdin.write(code.encode() + b"\n")
        proc.stdin.close()
        while proc.poll() is None:
            try:
                seen.append(Path(f"/proc/{proc.pid}/cmdline").read_bytes())
            except OSError:
                break
            time.sleep(0.05)
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert proc.wait() == 0, err
    assert seen
    assert all(code.encode() not in argv for argv in seen)
    assert code.encode() not in (site.hub.log.read_bytes())


def test_a_revoked_node_enrolls_again_with_a_new_key(site: Site, tmp_path: Path) -> None:
    """Rotating a node's key: revoke, enroll again under its name; its vCenters and
    history stay with it, its old key logs in no more and is not taken again."""
    site.enroll_and_connect()
    before = node_row(site, site.name)
    old_key = tmp_path / "old_key"
    old_key.write_bytes((site.node.data_dir / "tunnel" / "id_ed25519").read_bytes())
    old_key.chmod(0o600)
    refused = site.enroll(site.pair())
    assert refused.returncode == 1
    assert "revoke it, then enroll it again" in refused.stderr
    # A refused enrollment leaves the node's key as it was.
    assert (site.node.data_dir / "tunnel" / "id_ed25519").read_bytes() == old_key.read_bytes()

    assert sendense("nodes", "revoke", site.name, env=site.cli_env()).returncode == 0
    site.node.stop_tunnel()
    again = site.enroll(site.pair())
    assert again.returncode == 0, again.stderr
    site.node.start_tunnel()
    site.node.wait_tunnel("connected", timeout=60)

    after = node_row(site, site.name)
    assert (after["id"], after["system_user"]) == (before["id"], before["system_user"])
    assert after["key_fingerprint"] != before["key_fingerprint"]
    assert after["revoked"] is False
    assert not authenticated(ssh_as(site, after["system_user"], old_key))
    assert authenticated(
        ssh_as(site, after["system_user"], site.node.data_dir / "tunnel" / "id_ed25519")
    )


NOT_ROOT = """
import sys
from pathlib import Path
from sendense.common.config import load_settings
from sendense.common.errors import Unavailable
from sendense.hub.config import HubSettings
from sendense.hub.service import Hub

work = Path(sys.argv[1])
settings = load_settings(
    HubSettings, data_dir=work / "hub", database_url=f"sqlite:///{work / 'hub.db'}"
)
hub = Hub.open(settings)
code, _ = hub.nodes.pairing_code()
try:
    hub.enroll_node(code, "n1", sys.argv[2], "c2ln", "sdn_token")
except Unavailable as exc:
    print(exc.message)
print("nodes", len(hub.nodes.list()))
hub.db.dispose()
"""
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_a_hub_not_run_as_root_refuses_to_enroll(tmp_path: Path) -> None:
    """It cannot make the node's user, and does not fall back to its own."""
    work = Path(tempfile.mkdtemp(prefix="sendense-not-root-"))
    try:
        os.chown(work, 65534, 65534)
        public = new_key(tmp_path / "key").with_suffix(".pub").read_text()
        done = subprocess.run(
            [*AS_NOBODY, sys.executable, "-c", NOT_ROOT, str(work), public],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=work,
        )
        assert done.returncode == 0, done.stderr
        assert "the hub runs as 'nobody', not root" in done.stdout
        assert "nodes 0" in done.stdout
    finally:
        shutil.rmtree(work)
