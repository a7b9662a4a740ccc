"""Every way a node job goes wrong ends with a clear message, no snapshot left
behind, and the vCenter password in no log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sendense.hub.backup.disks import PreparedJob
from sendense.hub.service import Hub
from tests.rig.net import free_port
from tests.rig.node_tasks import (
    disk_specs,
    node_client,
    node_settings_for,
    snapshot_names,
    start_body,
    unique,
    wait_job,
)
from tests.rig.procs import kill_all, pids_with
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, fill, flat_file


@pytest.fixture
def slow_node(tmp_path: Path, hub: Hub) -> Iterator[TestClient]:
    """One 1 MiB read at a time: slow enough to interrupt."""
    settings = node_settings_for(
        hub,
        tmp_path / "node",
        chunk_mib=1,
        readers_per_disk=1,
        writes_in_flight=1,
    )
    with node_client(settings) as client:
        yield client


@pytest.fixture(autouse=True)
def password_never_logged(vcsim: Vcsim, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert vcsim.password not in caplog.text


def big_vm(si: Any, vcsim: Vcsim, size: int = 256 * MiB) -> tuple[str, Any]:
    name = unique("big")
    vm = create_vm(si, name, [(2000, size, SCSI0)], cbt=True)
    fill(flat_file(vcsim, vm, 2000), [(off, b"\xa5" * MiB) for off in range(0, size, MiB)])
    return name, vm


def start_big_backup(
    node: TestClient, hub: Hub, repo_dir: Path, vcsim: Vcsim, si: Any
) -> tuple[Any, PreparedJob]:
    hub.repos.add(str(repo_dir))
    name, vm = big_vm(si, vcsim)
    prepared = hub.ledger.prepare(name, disk_specs(vm), "full")
    node.post("/api/v1/backup/start", json=start_body(vcsim, prepared, name, {}))
    return vm, prepared


def test_target_closed_mid_job_fails_and_removes_the_snapshot(
    slow_node: TestClient, hub: Hub, repo_dir: Path, vcsim: Vcsim, si: Any
) -> None:
    vm, prepared = start_big_backup(slow_node, hub, repo_dir, vcsim, si)

    def kill_export(status: dict[str, Any]) -> None:
        if status["disks"] and status["disks"][0]["bytes_done"] > 0:
            kill_all(pids_with(str(repo_dir)))

    status, watch = wait_job(slow_node, prepared.job_id, vm, during=kill_export)
    assert status["state"] == "failed"
    assert f"{prepared.disks[0].target.port}.sock" in status["error"]
    assert len(watch.seen) == 1
    assert snapshot_names(vm) == []
    hub.ledger.fail(prepared.job_id, status["error"])


def test_cancel_stops_the_job_and_removes_the_snapshot(
    slow_node: TestClient, hub: Hub, repo_dir: Path, vcsim: Vcsim, si: Any
) -> None:
    vm, prepared = start_big_backup(slow_node, hub, repo_dir, vcsim, si)

    def cancel(status: dict[str, Any]) -> None:
        if status["disks"] and status["disks"][0]["bytes_done"] > 0:
            slow_node.post(f"/api/v1/jobs/{prepared.job_id}/cancel")

    status, _ = wait_job(slow_node, prepared.job_id, vm, during=cancel)
    assert status["state"] == "cancelled"
    assert snapshot_names(vm) == []
    hub.ledger.fail(prepared.job_id, "cancelled")


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("unknown_vm", "no-such-vm"),
        ("wrong_password", "login"),
        ("key_not_a_disk", "2001"),
        ("unreachable_target", "nbd://"),
        ("wrong_thumbprint", "0" * 64),
        ("no_thumbprint", "vcenter_thumbprint"),
    ],
)
def test_bad_input_fails_the_job_with_a_clear_message(
    slow_node: TestClient, vcsim: Vcsim, si: Any, case: str, named: str
) -> None:
    name = unique("bad")
    vm = create_vm(si, name, [(2000, 4 * MiB, SCSI0)], cbt=True)
    port = free_port()
    body: dict[str, Any] = {
        "job_id": unique("job"),
        "vm_name": name,
        "vcenter_host": vcsim.host,
        "vcenter_user": vcsim.username,
        "vcenter_password": vcsim.password,
        "vcenter_thumbprint": vcsim.thumbprint,
        "nbd_targets": f"2000:nbd://127.0.0.1:{port}/x-disk0",
    }
    if case == "unknown_vm":
        body["vm_name"] = "no-such-vm"
    elif case == "wrong_password":
        body["vcenter_password"] = vcsim.password + "x"
    elif case == "key_not_a_disk":
        body["nbd_targets"] = f"2001:nbd://127.0.0.1:{port}/x-disk1"
    elif case == "wrong_thumbprint":
        body["vcenter_thumbprint"] = "00" * 32
    elif case == "no_thumbprint":
        del body["vcenter_thumbprint"]
    response = slow_node.post("/api/v1/backup/start", json=body)
    assert response.status_code == 202
    status, _ = wait_job(slow_node, body["job_id"], vm)
    assert status["state"] == "failed"
    assert named in status["error"]
    assert snapshot_names(vm) == []
