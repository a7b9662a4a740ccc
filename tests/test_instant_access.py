"""Instant access: a restore point's disks over NBD with a throwaway overlay, read by
qemu-img and nbdinfo, written to without changing the backup, closed when idle,
and cleaned up by a hub restarted after kill -9."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from sendense.common.errors import NotFound
from sendense.hub.api.app import create_app
from sendense.hub.api.queries import Queries
from sendense.hub.backup.ledger import DiskSpec
from sendense.hub.db.models import PointStatus, RestorePoint
from sendense.hub.repository.ports import port_is_bindable
from sendense.hub.service import Hub
from sendense.hub.verify.verifier import Verifier
from tests.rig.cli import sendense
from tests.rig.hub import HubProcess
from tests.rig.nbd_data import pattern, write_through_nbd
from tests.rig.procs import pids_with, wait_gone
from tests.test_restore_export import SIZES, make_chain, repository_state

IDLE_S = 1.0


@pytest.fixture
def idle_api(hub: Hub, token: str) -> Iterator[TestClient]:
    """The API with a short idle time: its expiry loop checks every IDLE_S / 4."""
    hub.settings.access_idle_s = IDLE_S
    with TestClient(create_app(hub), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def same_as(uri: str, raw: Path) -> bool:
    result = run("qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", uri, str(raw))
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_instant_access_reads_as_the_point_takes_writes_elsewhere_and_expires(
    hub: Hub, idle_api: TestClient, repo_dir: Path, tmp_path: Path
) -> None:
    chain = make_chain(hub, repo_dir, tmp_path)
    before = repository_state(repo_dir)
    opened = idle_api.post(f"/api/v1/restore-points/{chain.top}/access")
    assert opened.status_code == 201, opened.text
    access = opened.json()
    assert access["restore_point_id"] == chain.top
    uris = {d["disk_key"]: d["uri"] for d in access["disks"]}
    ports = [d["port"] for d in access["disks"]]
    assert sorted(uris) == [2000, 2001]
    assert uris[2000] == f"nbd://127.0.0.1:{ports[0]}/{chain.top}-2000"
    assert idle_api.get("/api/v1/access").json() == [access]

    for key, uri in uris.items():
        assert same_as(uri, chain.expected[chain.top][key])
        info = json.loads(run("nbdinfo", "--json", uri).stdout)
        assert info["exports"][0]["export-size"] == SIZES[key]
        assert (
            json.loads(run("qemu-img", "info", "--output=json", uri).stdout)["virtual-size"]
            == SIZES[key]
        )

    # Writes land in the overlay: the export changes, the backup does not.
    wrote = run("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", uris[2000])
    assert wrote.returncode == 0, wrote.stderr
    write_through_nbd(uris[2001], [(0, pattern(9, 65536))])
    assert not same_as(uris[2000], chain.expected[chain.top][2000])
    assert run("qemu-io", "-f", "raw", "-c", "read -P 0xab 0 1M", uris[2000]).returncode == 0

    # A connected client keeps it open past the idle time...
    client = nbd.NBD()
    client.connect_uri(uris[2000])
    time.sleep(IDLE_S * 2.5)
    assert client.pread(4, 0) == b"\xab" * 4
    assert len(idle_api.get("/api/v1/access").json()) == 1
    # ...and once it is gone, the access closes by itself.
    client.shutdown()
    wait_for(lambda: idle_api.get("/api/v1/access").json() == [])
    assert Queries(hub.db).job(access["id"]).state == "complete"
    assert hub.ports.status().used == 0
    assert all(port_is_bindable("127.0.0.1", p) for p in ports)
    assert pids_with(str(hub.settings.scratch_dir)) == []
    assert list(hub.settings.scratch_dir.iterdir()) == []

    assert repository_state(repo_dir) == before
    verifier = Verifier(hub.db, hub.repos, hub.settings.scratch_dir)
    assert all(v.valid for v in verifier.verify(chain.points))


def test_access_refuses_bad_input_and_closes_on_request(
    hub: Hub, api: TestClient, repo_dir: Path, tmp_path: Path
) -> None:
    chain = make_chain(hub, repo_dir, tmp_path)
    unfinished = hub.ledger.prepare("restore-vm", [DiskSpec(k, s) for k, s in SIZES.items()])
    before = repository_state(repo_dir)
    for point, status, code in (
        ("no-such-point", 404, "not_found"),
        (unfinished.restore_point_id, 409, "point_not_restorable"),
    ):
        response = api.post(f"/api/v1/restore-points/{point}/access")
        assert response.status_code == status, response.text
        assert response.json()["error"] == code
    assert api.delete("/api/v1/access/no-such-access").status_code == 404
    assert api.get("/api/v1/access/no-such-access").status_code == 404

    opened = api.post(f"/api/v1/restore-points/{chain.points[0]}/access").json()
    assert api.get(f"/api/v1/access/{opened['id']}").json() == opened
    assert api.delete(f"/api/v1/access/{opened['id']}").status_code == 200
    assert api.delete(f"/api/v1/access/{opened['id']}").status_code == 404
    assert api.get("/api/v1/access").json() == []
    assert Queries(hub.db).job(opened["id"]).state == "complete"
    hub.access.close(opened["id"])  # closed already: nothing to do
    with pytest.raises(NotFound):
        hub.access.close(unfinished.job_id)  # a backup job is no access

    with hub.db.session() as s:
        s.execute(
            update(RestorePoint)
            .where(RestorePoint.id == chain.top)
            .values(status=PointStatus.INVALID)
        )
    refused = api.post(f"/api/v1/restore-points/{chain.top}/access")
    assert refused.status_code == 409
    assert refused.json()["error"] == "point_not_restorable"
    assert "invalid" in refused.json()["message"]
    assert hub.ports.status().used == 2  # only the unfinished backup's
    assert list(hub.settings.scratch_dir.iterdir()) == []
    assert repository_state(repo_dir) == before
    hub.ledger.fail(unfinished.job_id, "test: never meant to finish")


@pytest.fixture
def hub_process(hub: Hub, sqlite_url: str) -> Iterator[HubProcess]:
    served = HubProcess(hub.settings.data_dir, sqlite_url)
    try:
        yield served
    finally:
        served.stop()


def test_cli_then_kill_9_leaves_nothing_after_restart(
    hub: Hub, hub_process: HubProcess, repo_dir: Path, tmp_path: Path
) -> None:
    chain = make_chain(hub, repo_dir, tmp_path)
    before = repository_state(repo_dir)
    scratch = hub.settings.scratch_dir
    hub_process.start()
    token = hub_process.initial_token()
    env = {
        **os.environ,
        "COLUMNS": "200",
        **hub_process.cli_env(token),
    }

    opened = sendense("restore", "instant", chain.top, env=env)
    assert opened.returncode == 0, opened.stderr
    first, *disks = opened.stdout.splitlines()
    access_id = first.split()[1]
    assert [line.split()[0] for line in disks] == ["2000", "2001"]
    uri = disks[0].split()[1]
    assert uri.startswith("nbd://127.0.0.1:")
    assert (
        json.loads(run("nbdinfo", "--json", uri).stdout)["exports"][0]["export-size"]
        == (SIZES[2000])
    )
    listed = sendense("restore", "access-list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert access_id in listed.stdout
    assert uri in listed.stdout
    closed = sendense("restore", "close", access_id, env=env)
    assert (closed.returncode, closed.stdout.strip()) == (0, f"access {access_id} closed")
    again = sendense("restore", "close", access_id, env=env)
    assert again.returncode == 3
    assert again.stderr == f"error: no open access {access_id}\n"
    assert pids_with(str(scratch)) == []

    with hub_process.client(token, timeout=5) as client:
        access = client.post(f"/api/v1/restore-points/{chain.top}/access").json()
        servers = pids_with(str(scratch))
        assert len(servers) == 2
        hub_process.kill9()
        assert wait_gone(servers, timeout=0.5) == servers  # the crash left them running

        hub_process.start()
        assert wait_gone(servers, timeout=10) == []
        assert client.get("/api/v1/access").json() == []
        assert client.get("/api/v1/ports").json()["used"] == 0
        assert all(port_is_bindable("127.0.0.1", d["port"]) for d in access["disks"])
        job = client.get(f"/api/v1/jobs/{access['id']}").json()
        assert job["state"] == "failed"
    assert list(scratch.iterdir()) == []
    assert repository_state(repo_dir) == before
