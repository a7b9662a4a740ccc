"""The node's inventory endpoint, CBT switched on when it is off, and `sendense node serve`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from sendense.hub.api.queries import Queries
from sendense.hub.service import Hub
from sendense.nbd.qemu_img import QemuImg
from tests.rig.net import free_port
from tests.rig.node_tasks import (
    disk_specs,
    finish_on_hub,
    node_client,
    node_settings_for,
    snapshot_names,
    start_body,
    unique,
    vcenter_login,
    wait_job,
)
from tests.rig.procs import stop
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, SCSI1, MiB, create_vm, fill, flat_file


@pytest.fixture
def node(tmp_path: Path, hub: Hub) -> Iterator[TestClient]:
    with node_client(node_settings_for(hub, tmp_path / "node")) as client:
        yield client


def test_discover_lists_vms_with_their_real_disk_keys(
    node: TestClient, vcsim: Vcsim, si: Any
) -> None:
    name = unique("inv")
    create_vm(si, name, [(2000, 8 * MiB, SCSI0), (2016, 4 * MiB, SCSI1)], cbt=True)
    response = node.post("/api/v1/vms/discover", json=vcenter_login(vcsim))
    assert response.status_code == 200, response.text
    vms = {vm["name"]: vm for vm in response.json()["vms"]}
    vm = vms[name]
    assert vm["path"] == f"DC0/vm/{name}"
    assert vm["cbt_enabled"] is True
    assert [(d["key"], d["capacity_bytes"]) for d in vm["disks"]] == [
        (2000, 8 * MiB),
        (2016, 4 * MiB),
    ]
    assert vm["disks"][1]["datastore_path"].startswith("[LocalDS_0]")

    refused = node.post("/api/v1/vms/discover", json=vcenter_login(vcsim, vcenter_password="wrong"))
    assert refused.status_code == 422
    assert refused.json()["error"] == "vcenter_login_refused"
    assert vcsim.password not in refused.text


def test_a_vm_without_cbt_gets_it_and_the_next_backup_is_incremental(
    node: TestClient, hub: Hub, repo_dir: Path, vcsim: Vcsim, si: Any
) -> None:
    hub.repos.add(str(repo_dir))
    name = unique("nocbt")
    vm = create_vm(si, name, [(2000, 8 * MiB, SCSI0)], cbt=False)
    source = flat_file(vcsim, vm, 2000)
    fill(source, [(0, b"\x11" * MiB)])
    first = hub.ledger.prepare(name, disk_specs(vm), "auto")
    node.post("/api/v1/backup/start", json=start_body(vcsim, first, name, {}))
    status, _ = wait_job(node, first.job_id, vm)
    assert status["state"] == "complete", status
    assert any("CBT was off" in w for w in status["warnings"])
    assert any("crash-consistent" in w for w in status["warnings"])
    finish_on_hub(hub, first, status)
    assert vm.config.changeTrackingEnabled is True

    fill(source, [(4 * MiB, b"\x22" * 65536)])
    second = hub.ledger.prepare(name, disk_specs(vm), "auto")
    previous = {d["disk_key"]: d["change_id"] for d in status["disks"]}
    node.post("/api/v1/backup/start", json=start_body(vcsim, second, name, previous))
    status, _ = wait_job(node, second.job_id, vm)
    assert status["disks"][0]["backup_type"] == "incremental"
    assert status["disks"][0]["bytes_written"] == 65536
    point = finish_on_hub(hub, second, status)
    image = repo_dir / Queries(hub.db).restore_point(point).disks[0].file_path
    assert QemuImg().compare(source, image, "raw", "qcow2")


def test_the_seeds_own_start_body_gets_a_job_id_from_the_node_and_backs_up(
    tmp_path: Path,
    hub: Hub,
    repo_dir: Path,
    vcsim: Vcsim,
    si: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub.repos.add(str(repo_dir))
    name = unique("seed")
    vm = create_vm(si, name, [(2000, 8 * MiB, SCSI0), (2016, 4 * MiB, SCSI1)], cbt=True)
    source = flat_file(vcsim, vm, 2000)
    fill(source, [(0, b"\x5a" * MiB), (6 * MiB, b"\xa5" * 65536)])
    prepared = hub.ledger.prepare(name, disk_specs(vm), "auto")
    # The seed's example, field for field: no job_id, no thumbprint, no backup_type.
    seed_body = {
        "vm_name": name,
        "vcenter_host": vcsim.host,
        "vcenter_user": vcsim.username,
        "vcenter_password": vcsim.password,
        "nbd_targets": prepared.nbd_targets,
    }
    settings = node_settings_for(
        hub, tmp_path / "node", vcenter_thumbprints={vcsim.host: vcsim.thumbprint}
    )
    with node_client(settings) as node:
        started = node.post("/api/v1/backup/start", json=seed_body)
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        assert isinstance(job_id, str)
        assert job_id
        assert started.json()["status"] == "running"
        status, watch = wait_job(node, job_id, vm)
        assert [j["job_id"] for j in node.get("/api/v1/jobs").json()] == [job_id]
    assert status["state"] == "complete", status
    assert status["vm_name"] == name
    assert {d["backup_type"] for d in status["disks"]} == {"full"}
    assert watch.most_at_once <= 1
    assert snapshot_names(vm) == []
    point = finish_on_hub(hub, prepared, status)
    images = {d.disk_key: d.file_path for d in Queries(hub.db).restore_point(point).disks}
    assert QemuImg().compare(source, repo_dir / images[2000], "raw", "qcow2")
    assert vcsim.password not in caplog.text


def test_a_repeated_start_answers_the_job_it_started_and_another_start_with_its_id_is_refused(
    node: TestClient, hub: Hub, repo_dir: Path, vcsim: Vcsim, si: Any
) -> None:
    """The hub repeats a start whose answer a tunnel blip lost: the node must answer
    the job it runs, not 409, and never start a second copy into the same exports."""
    hub.repos.add(str(repo_dir))
    name = unique("again")
    vm = create_vm(si, name, [(2000, 32 * MiB, SCSI0)], cbt=True)
    source = flat_file(vcsim, vm, 2000)
    fill(source, [(0, b"\x33" * (4 * MiB)), (20 * MiB, b"\x44" * MiB)])
    prepared = hub.ledger.prepare(name, disk_specs(vm), "auto")
    body = start_body(vcsim, prepared, name, {})
    first = node.post("/api/v1/backup/start", json=body)
    assert first.status_code == 202, first.text
    again = node.post("/api/v1/backup/start", json=body)
    assert again.status_code == 202, again.text
    assert again.json() == first.json() == {"job_id": prepared.job_id, "status": "running"}

    # The same id for another VM or other targets is another job: still refused.
    for change in ({"vm_name": unique("other")}, {"nbd_targets": body["nbd_targets"] + "x"}):
        refused = node.post("/api/v1/backup/start", json={**body, **change})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "conflict"

    status, watch = wait_job(node, prepared.job_id, vm)
    assert status["state"] == "complete", status
    assert watch.most_at_once <= 1
    # After the end, a repeat reports how the job ended and starts nothing.
    late = node.post("/api/v1/backup/start", json=body)
    assert late.status_code == 202
    assert late.json() == {"job_id": prepared.job_id, "status": "complete"}
    after = node.get(f"/api/v1/jobs/{prepared.job_id}").json()
    assert (after["state"], after["started_at"]) == ("complete", status["started_at"])
    point = finish_on_hub(hub, prepared, status)
    image = repo_dir / Queries(hub.db).restore_point(point).disks[0].file_path
    assert QemuImg().compare(source, image, "raw", "qcow2")


def test_node_serve_starts_writes_its_first_token_and_stops(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "node"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sendense",
            "node",
            "serve",
            "--data-dir",
            str(data),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health.json()["role"] == "node"
        token = (data / "initial-api-token").read_text().strip()
        jobs = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}
        )
        assert jobs.json() == []
    finally:
        stop(proc)
        if proc.stdout:
            output = proc.stdout.read().decode()
            proc.stdout.close()
    assert token not in output
