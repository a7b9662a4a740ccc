"""The tunnel with real processes: hub (with its sshd), node API, node tunnel (ssh),
and the simulated vCenter. The node dials out; everything crosses that one
connection."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from sendense.hub.db.models import PairingCode
from sendense.nbd.qemu_img import QemuImg
from tests.rig.cli import sendense
from tests.rig.net import free_port
from tests.rig.node import NodeProcesses
from tests.rig.node_tasks import snapshot_names, unique
from tests.rig.procs import listening_addresses, pids_with, stop
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, fill, flat_file, virtual_disks


@pytest.fixture
def site(bare_site: Site) -> Site:
    return bare_site


def forwarding(ssh: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> None:
    """Wait until `ssh -L 127.0.0.2:port:...` is logged in and listens on its end
    (ssh opens the local end once the session is up), or has exited."""
    deadline = time.monotonic() + timeout
    while f"127.0.0.2:{port}" not in listening_addresses(port):
        assert ssh.poll() is None, f"ssh exited {ssh.returncode}"
        assert time.monotonic() < deadline, f"ssh not forwarding 127.0.0.2:{port}"
        time.sleep(0.05)


def tunnel_user(site: Site, nodes: NodeProcesses | None = None) -> str:
    """The system user the node logs in as, as enrollment told it."""
    config = json.loads(((nodes or site.node).data_dir / "tunnel" / "tunnel.json").read_text())
    user: str = config["tunnel_user"]
    return user


def backup_through_tunnel(
    site: Site,
    node_api: httpx.Client,
    vcsim: Vcsim,
    vm: Any,
    name: str,
    during: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    disks = [
        {"key": k, "capacity_bytes": int(d.capacityInBytes)}
        for k, d in sorted(virtual_disks(vm.config).items())
    ]
    job = site.api.post("/api/v1/jobs", json={"vm_name": name, "disks": disks})
    assert job.status_code == 201, job.text
    created = job.json()
    assert "nbd://127.0.0.2:" in created["nbd_targets"]
    body = {
        "job_id": created["job_id"],
        "vm_name": name,
        "vcenter_host": vcsim.host,
        "vcenter_user": vcsim.username,
        "vcenter_password": vcsim.password,
        "vcenter_thumbprint": vcsim.thumbprint,
        "nbd_targets": created["nbd_targets"],
    }
    assert node_api.post("/api/v1/backup/start", json=body).status_code == 202
    deadline = time.monotonic() + 120
    while True:
        status = node_api.get(f"/api/v1/jobs/{created['job_id']}").json()
        if status["state"] not in ("queued", "running"):
            return created, status
        if during is not None:
            during(status)
        assert time.monotonic() < deadline
        time.sleep(0.1)


def finish(site: Site, created: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    if status["state"] == "complete":
        disks = {
            str(d["disk_key"]): {
                "change_id": d["change_id"],
                "checksum": d["checksum"],
                "data_bytes": d["bytes_written"],
            }
            for d in status["disks"]
        }
        body: dict[str, Any] = {"success": True, "disks": disks}
    else:
        body = {"success": False, "error": status["error"]}
    answer = site.api.post(f"/api/v1/jobs/{created['job_id']}/finish", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_enrolled_node_lists_vms_and_backs_up_two_disks_through_the_tunnel(
    site: Site, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    site.enroll_and_connect()
    nodes = site.api.get("/api/v1/nodes").json()
    assert [(n["name"], n["connected"]) for n in nodes] == [(site.name, True)]
    shown = sendense("hub", "status", env=site.cli_env())
    assert site.name in shown.stdout

    name = unique("pgtest1")
    vm = create_vm(si, name, [(2000, 32 * MiB, SCSI0), (2001, 16 * MiB, SCSI0)], cbt=True)
    fill(flat_file(vcsim, vm, 2000), [(0, b"\x5a" * MiB), (30 * MiB, b"\xa5" * MiB)])
    fill(flat_file(vcsim, vm, 2001), [(5 * MiB, b"\x33" * MiB)])

    listed = sendense(
        "vms",
        "list",
        "--node",
        site.name,
        "--vcenter",
        vcsim.host,
        "--user",
        vcsim.username,
        "--thumbprint",
        vcsim.thumbprint,
        env={
            **site.cli_env(),
            "SENDENSE_VCENTER_PASSWORD": vcsim.password,
        },
    )
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout

    assert site.api.post("/api/v1/repositories", json={"path": str(repo_dir)}).status_code == 201
    with site.node_api() as node_api:
        created, status = backup_through_tunnel(site, node_api, vcsim, vm, name)
    assert status["state"] == "complete", status
    job = finish(site, created, status)
    assert job["state"] == "complete"
    point = site.api.get("/api/v1/restore-points").json()[0]
    for disk in point["disks"]:
        assert QemuImg().compare(
            flat_file(vcsim, vm, disk["disk_key"]), repo_dir / disk["file_path"], "raw", "qcow2"
        )
    assert snapshot_names(vm) == []


def test_pairing_codes_are_single_use_and_expire(site: Site) -> None:
    code = site.pair()
    first = site.enroll(code)
    assert first.returncode == 0, first.stderr
    again = site.enroll(code, NodeProcesses(site.node.data_dir.parent / "node2"), "n2")
    assert again.returncode == 5
    assert "used" in again.stderr

    expired = site.pair()
    hub = site.hub_service()
    try:
        with hub.db.session() as s:
            s.execute(
                update(PairingCode)
                .where(PairingCode.used_at.is_(None))
                .values(expires_at=PairingCode.created_at)
            )
    finally:
        hub.db.dispose()
    late = site.enroll(expired, NodeProcesses(site.node.data_dir.parent / "node3"), "n3")
    assert late.returncode == 5
    assert "expired" in late.stderr
    assert [n["name"] for n in site.api.get("/api/v1/nodes").json()] == [site.name]


def test_unknown_key_and_forbidden_forwards_are_refused(site: Site, tmp_path: Path) -> None:
    site.enroll_and_connect()
    tunnel_dir = site.node.data_dir / "tunnel"
    base = [
        "ssh",
        "-N",
        "-F",
        "/dev/null",
        "-p",
        str(site.hub.tunnel_port),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={tunnel_dir / 'known_hosts'}",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "ExitOnForwardFailure=yes",
    ]
    user = f"{tunnel_user(site)}@127.0.0.1"
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    refused = subprocess.run(
        [*base, "-i", str(stranger), user], capture_output=True, text=True, timeout=30, check=False
    )
    assert refused.returncode == 255
    assert "denied" in refused.stderr

    key = ["-i", str(tunnel_dir / "id_ed25519")]
    shell = subprocess.run(
        ["ssh", *base[2:], *key, user, "id"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shell.returncode != 0
    assert "uid=" not in shell.stdout

    # A forward to a port outside the NBD pool and API (the hub's tunnel sshd itself):
    # the connection is opened by ssh locally, then closed without a byte.
    local = free_port()
    # ssh's messages go to a file: a pipe's end can outlive ssh on a loaded machine,
    # and reading it to its end then waits for nothing.
    errors = tmp_path / "forward.err"
    with (
        errors.open("wb") as err_file,
        subprocess.Popen(
            [*base, *key, "-L", f"127.0.0.2:{local}:127.0.0.1:{site.hub.tunnel_port}", user],
            stderr=err_file,
        ) as forward,
    ):
        try:
            forwarding(forward, local)

            with socket.create_connection(("127.0.0.2", local), timeout=5) as sock:
                sock.settimeout(5)
                assert sock.recv(64) == b""  # no SSH banner: sshd refused the open
        finally:
            # By PID, killed if it outlives the wait: on a loaded machine ssh once
            # took more than 10 s to leave after SIGTERM (exiting 0).
            stop(forward)
    err = errors.read_bytes()
    assert b"administratively prohibited" in err or b"open failed" in err

    remote_port = free_port()
    reverse = subprocess.run(
        [*base, *key, "-R", f"127.0.0.1:{remote_port}:127.0.0.1:22", user],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert reverse.returncode == 255
    assert str(remote_port) in reverse.stderr  # ssh names the forward it could not set up


def test_revoked_node_is_cut_off(site: Site) -> None:
    site.enroll_and_connect()
    revoked = sendense(
        "nodes",
        "revoke",
        site.name,
        env=site.cli_env(),
    )
    assert revoked.returncode == 0, revoked.stderr
    # The first drop is the hub ending the session; every retry after it is refused.
    status = site.node.wait_tunnel("reconnecting", timeout=30, restarts=2)
    assert "denied" in str(status.get("last_error"))
    nodes = site.api.get("/api/v1/nodes").json()
    assert nodes[0]["revoked"] is True
    assert nodes[0]["connected"] is False


def test_node_refuses_a_hub_whose_host_key_changed(site: Site) -> None:
    site.enroll_and_connect()
    site.node.stop_tunnel()
    site.hub.stop()
    for path in (site.hub.data_dir / "tunnel").glob("host_ed25519*"):
        path.unlink()
    site.hub.start()
    site.node.start_tunnel()
    status = site.node.wait_tunnel("reconnecting", timeout=30)
    assert "changed" in str(status.get("last_error"))
    shown = sendense("node", "status", "--data-dir", str(site.node.data_dir), env=site.node.env)
    assert shown.returncode == 1
    assert "changed" in shown.stdout


def test_kill_9_of_the_tunnel_mid_backup_heals_and_the_next_backup_succeeds(
    tmp_path: Path, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    site = Site(tmp_path, chunk_mib="1", readers_per_disk="1", writes_in_flight="1")
    try:
        site.start()
        site.enroll_and_connect()
        site.api.post("/api/v1/repositories", json={"path": str(repo_dir)})
        name = unique("heal")
        vm = create_vm(si, name, [(2000, 128 * MiB, SCSI0), (2001, 64 * MiB, SCSI0)], cbt=True)
        for key, size in ((2000, 128), (2001, 64)):
            fill(flat_file(vcsim, vm, key), [(o * MiB, b"\x77" * MiB) for o in range(size)])
        killed: list[int] = []

        def kill_ssh(status: dict[str, Any]) -> None:
            done = sum(d["bytes_done"] for d in status["disks"])
            if not killed and done > 0:
                ssh_pid = int(str(site.node.tunnel_status()["ssh_pid"]))
                os.kill(ssh_pid, signal.SIGKILL)
                killed.append(ssh_pid)

        with site.node_api() as node_api:
            created, status = _backup_surviving_tunnel_loss(
                site, node_api, vcsim, vm, name, kill_ssh
            )
        assert killed
        site.node.wait_tunnel("connected", restarts=1)
        job = finish(site, created, status)
        if status["state"] == "complete":
            assert job["state"] == "complete"
        else:
            assert job["state"] == "failed"
            assert "nbd://" in status["error"] or "connection" in status["error"].lower()
        points = site.api.get("/api/v1/restore-points").json()
        assert all(p["status"] == "complete" for p in points)
        assert snapshot_names(vm) == []
        with site.node_api() as node_api:
            created, status = backup_through_tunnel(site, node_api, vcsim, vm, name)
        assert status["state"] == "complete", status
        assert finish(site, created, status)["state"] == "complete"
        point = site.api.get("/api/v1/restore-points").json()[-1]
        for disk in point["disks"]:
            assert QemuImg().compare(
                flat_file(vcsim, vm, disk["disk_key"]), repo_dir / disk["file_path"], "raw", "qcow2"
            )
    finally:
        site.stop()


def _backup_surviving_tunnel_loss(
    site: Site, node_api: httpx.Client, vcsim: Vcsim, vm: Any, name: str, during: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The node's API is reached through the tunnel too: while it is down, polls fail."""
    try:
        return backup_through_tunnel(site, node_api, vcsim, vm, name, during=during)
    except httpx.HTTPError:
        site.node.wait_tunnel("connected", restarts=1)
        job_id = site.api.get("/api/v1/jobs").json()[0]["id"]
        deadline = time.monotonic() + 120
        while True:
            status: dict[str, Any] = node_api.get(f"/api/v1/jobs/{job_id}").json()
            if status["state"] not in ("queued", "running"):
                return {"job_id": job_id}, status
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_enrollment_refuses_a_hub_fingerprint_that_does_not_match(site: Site) -> None:
    wrong = "SHA256:" + "A" * 43
    code = site.pair()
    done = site.node.enroll(site.hub.url, code, site.name, wrong, site.hub_cert_sha256)
    assert done.returncode == 1
    assert wrong in done.stderr
    assert not (site.node.data_dir / "tunnel" / "known_hosts").exists()


def test_revoking_ends_sessions_that_hold_no_reverse_forward(site: Site) -> None:
    site.enroll_and_connect()
    tunnel_dir = site.node.data_dir / "tunnel"
    site.node.stop_tunnel()
    local = free_port()
    argv = [
        "ssh",
        "-N",
        "-F",
        "/dev/null",
        "-p",
        str(site.hub.tunnel_port),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(tunnel_dir / "id_ed25519"),
        "-o",
        f"UserKnownHostsFile={tunnel_dir / 'known_hosts'}",
        "-L",
        f"127.0.0.2:{local}:127.0.0.1:{site.hub.port}",
        f"{tunnel_user(site)}@127.0.0.1",
    ]
    with subprocess.Popen(argv, stderr=subprocess.DEVNULL) as stolen:
        forwarding(stolen, local)  # connected, forwarding, no -R
        revoked = sendense("nodes", "revoke", site.name, env=site.cli_env())
        assert revoked.returncode == 0, revoked.stderr
        assert stolen.wait(timeout=15) != 0


def test_stopping_the_hub_ends_every_tunnel_session(site: Site) -> None:
    """A session left behind would hold the node's reverse port and forwards open."""
    site.enroll_and_connect()
    reverse_port = site.api.get("/api/v1/nodes").json()[0]["reverse_port"]
    site.hub.stop()
    assert pids_with(str(site.hub.data_dir / "tunnel"), name="sshd") == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", reverse_port), timeout=1).close()
    site.node.wait_tunnel("reconnecting", timeout=30)
    site.hub.start()
    site.node.wait_tunnel("connected", timeout=60)
    site.hub.kill9()  # sshd is its own session: it and its sessions outlive the hub
    site.hub.start()  # start-up stops the old sshd and its sessions
    status = site.node.wait_tunnel("connected", timeout=60, restarts=2)
    assert status["state"] == "connected"


FAKE_NODE = """
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = server.accept()
    with conn, open(sys.argv[2], "ab") as log:
        conn.settimeout(2)
        try:
            log.write(conn.recv(65536))
        except OSError:
            pass
"""


def test_a_process_posing_as_sshd_on_a_reverse_port_gets_no_secret(
    tmp_path: Path, vcsim: Vcsim
) -> None:
    """A local user binds a node's reverse port while its tunnel is down, under the
    title `sshd: root@notty` (`exec -a`): the hub sends it no request, so neither
    the node's API token nor a vCenter password (issue 12, point 5)."""
    site = Site(tmp_path / "site")
    fake: subprocess.Popen[bytes] | None = None
    try:
        site.start()
        site.enroll_and_connect()
        site.add_vcenter(vcsim)
        reverse_port = site.api.get("/api/v1/nodes").json()[0]["reverse_port"]
        site.node.stop_tunnel()
        deadline = time.monotonic() + 30
        while True:  # the session's listener goes with the tunnel
            try:
                socket.create_connection(("127.0.0.1", reverse_port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        received = tmp_path / "received"
        received.touch()
        python = sys.executable  # a real binary (a pyenv shim would lose the title)
        script = f"exec -a 'sshd: root@notty' {python} -c '{FAKE_NODE}' {reverse_port} {received}"
        fake = subprocess.Popen(["bash", "-c", script])
        while True:  # listening (the probe itself sends nothing)
            try:
                socket.create_connection(("127.0.0.1", reverse_port), timeout=1).close()
                break
            except ConnectionRefusedError:
                assert fake.poll() is None
                time.sleep(0.1)

        answer = site.api.post(
            f"/api/v1/nodes/{site.name}/vms",
            json={
                "vcenter_host": vcsim.host,
                "vcenter_user": vcsim.username,
                "vcenter_password": vcsim.password,
            },
        )
        assert answer.status_code == 503, answer.text
        assert "not connected" in answer.json()["message"]
        assert received.read_bytes() == b""
        title = (Path("/proc") / str(fake.pid) / "cmdline").read_bytes().split(b"\0")[0]
        assert title == b"sshd: root@notty"  # the disguise the old check fell for
    finally:
        if fake is not None:
            fake.kill()
            fake.wait()
        site.stop()


def test_sessions_of_a_killed_sshd_end_with_the_hub(site: Site) -> None:
    """kill -9 of the hub's sshd leaves its sessions running, reparented: the hub's
    stop and start still end them (they are found by the tunnel port they hold)."""
    site.enroll_and_connect()
    reverse_port = site.api.get("/api/v1/nodes").json()[0]["reverse_port"]
    sshd = int((site.hub.data_dir / "tunnel" / "sshd.pid").read_text().split()[0])
    os.kill(sshd, signal.SIGKILL)
    socket.create_connection(("127.0.0.1", reverse_port), timeout=1).close()  # still served
    site.hub.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", reverse_port), timeout=1).close()
    site.node.wait_tunnel("reconnecting", timeout=30)
    site.hub.start()
    assert site.node.wait_tunnel("connected", timeout=60, restarts=1)["state"] == "connected"
