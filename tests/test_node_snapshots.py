"""The node's snapshots under faults: it touches only the snapshots it recorded,
a killed node's snapshot is removed by the next job on that vCenter, and a
removal that fails after a good copy is a warning the snapshot hunter repairs."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sendense.common.contract import NodeJobStatus
from sendense.hub.service import Hub
from sendense.node.api.app import Node
from sendense.node.auth import NodeTokens
from sendense.node.backup_tasks import NodeJob
from sendense.node.snapshot_hunter import SnapshotRecord
from sendense.node.vmware import snapshots
from sendense.node.vmware.connection import VcenterError
from tests.rig.node import NodeProcesses
from tests.rig.node_tasks import (
    disk_specs,
    finish_on_hub,
    node_client,
    node_settings_for,
    snapshot_names,
    start_body,
    unique,
    wait_job,
)
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_snapshot, create_vm, fill, flat_file


def small_vm(si: Any, prefix: str) -> tuple[str, Any]:
    name = unique(prefix)
    return name, create_vm(si, name, [(2000, 4 * MiB, SCSI0)], cbt=True)


def records(data_dir: Path) -> dict[str, dict[str, Any]]:
    path = data_dir / "snapshots.json"
    if not path.exists():
        return {}
    return {r["job_id"]: r for r in json.loads(path.read_text())}


def assert_state_file_safe(data_dir: Path, vcsim: Vcsim) -> None:
    path = data_dir / "snapshots.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert vcsim.password.encode() not in path.read_bytes()


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_a_backup_leaves_a_users_and_a_running_jobs_snapshots_alone(
    hub: Hub, repo_dir: Path, vcsim: Vcsim, si: Any, tmp_path: Path
) -> None:
    hub.repos.add(str(repo_dir))
    name, vm = small_vm(si, "own")
    create_snapshot(si, vm, "sendense-user")
    busy_name, busy_vm = small_vm(si, "busy")
    other_job = unique("other")
    create_snapshot(si, busy_vm, f"sendense-{other_job}")
    settings = node_settings_for(hub, tmp_path / "node")
    with node_client(settings) as client:
        node: Node = client.app.state.node  # type: ignore[attr-defined]
        # Another job of this node runs on another VM of the same vCenter.
        node.runner.jobs[other_job] = NodeJob(
            NodeJobStatus(
                job_id=other_job, vm_name=busy_name, state="running", started_at=time.time()
            )
        )
        node.runner.snapshots.record(
            SnapshotRecord(
                job_id=other_job,
                vcenter_host=vcsim.host,
                vm_name=busy_name,
                vm_uuid=busy_vm.config.instanceUuid,
                snapshot=f"sendense-{other_job}",
                recorded_at=time.time(),
            )
        )
        prepared = hub.ledger.prepare(name, disk_specs(vm), "full")
        client.post("/api/v1/backup/start", json=start_body(vcsim, prepared, name, {}))
        status, _ = wait_job(client, prepared.job_id, vm)
        assert status["state"] == "complete", status
        finish_on_hub(hub, prepared, status)
    assert snapshot_names(vm) == ["sendense-user"]
    assert snapshot_names(busy_vm) == [f"sendense-{other_job}"]
    assert set(records(settings.data_dir)) == {other_job}
    assert_state_file_safe(settings.data_dir, vcsim)


def test_a_killed_nodes_snapshot_is_removed_by_the_next_job_on_that_vcenter(
    hub: Hub, repo_dir: Path, vcsim: Vcsim, si: Any, tmp_path: Path
) -> None:
    hub.repos.add(str(repo_dir))
    data_dir = tmp_path / "node"
    token = NodeTokens(data_dir).create("hub")
    name = unique("killed")
    size = 256 * MiB
    vm = create_vm(si, name, [(2000, size, SCSI0)], cbt=True)
    fill(flat_file(vcsim, vm, 2000), [(off, b"\xa5" * MiB) for off in range(0, size, MiB)])
    prepared = hub.ledger.prepare(name, disk_specs(vm), "full")
    # A real `node serve`, one 1 MiB read at a time, SIGKILLed mid-copy.
    serve = NodeProcesses(
        data_dir,
        chunk_mib="1",
        readers_per_disk="1",
        writes_in_flight="1",
        hub_export_dir=str(hub.exports.settings.socket_root),
    )
    serve.start_serve()
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{serve.port}",
            headers={"Authorization": f"Bearer {token}"},
        ) as api:
            api.post("/api/v1/backup/start", json=start_body(vcsim, prepared, name, {}))

            def copying() -> bool:
                job = api.get(f"/api/v1/jobs/{prepared.job_id}").json()
                return bool(job["disks"]) and job["disks"][0]["bytes_done"] > 0

            eventually(copying)
        assert serve.serve is not None
        serve.serve.kill()
        serve.serve.wait()
    finally:
        serve.stop()
    hub.ledger.fail(prepared.job_id, "node killed")
    assert snapshot_names(vm) == [f"sendense-{prepared.job_id}"]
    assert prepared.job_id in records(data_dir)
    assert_state_file_safe(data_dir, vcsim)

    # The next job on this vCenter, of another VM, removes it within that job.
    other_name, other_vm = small_vm(si, "next")
    settings = node_settings_for(hub, data_dir)
    with node_client(settings) as client:
        second = hub.ledger.prepare(other_name, disk_specs(other_vm), "full")
        client.post("/api/v1/backup/start", json=start_body(vcsim, second, other_name, {}))
        status, _ = wait_job(client, second.job_id, other_vm)
        assert status["state"] == "complete", status
        assert snapshot_names(vm) == []
        assert snapshot_names(other_vm) == []
        assert records(data_dir) == {}
        finish_on_hub(hub, second, status)


def test_a_removal_that_fails_after_a_good_copy_is_a_warning_and_is_retried(
    hub: Hub,
    repo_dir: Path,
    vcsim: Vcsim,
    si: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fault injection: vCenter refuses RemoveSnapshot until the test lets it through.
    refusing = [True]
    real_remove = snapshots.remove

    def remove(snapshot: Any, what: str, timeout: float) -> None:
        if refusing[0]:
            raise VcenterError(f"{what} failed: fault injection")
        real_remove(snapshot, what, timeout)

    monkeypatch.setattr(snapshots, "remove", remove)
    hub.repos.add(str(repo_dir))
    name, vm = small_vm(si, "stuck")
    settings = node_settings_for(hub, tmp_path / "node", snapshot_hunt_interval_s=0.2)
    with node_client(settings) as client:
        prepared = hub.ledger.prepare(name, disk_specs(vm), "full")
        client.post("/api/v1/backup/start", json=start_body(vcsim, prepared, name, {}))
        status, _ = wait_job(client, prepared.job_id, vm)
        assert status["state"] == "complete", status
        assert status["warnings"]
        finish_on_hub(hub, prepared, status)
        assert snapshot_names(vm) == [status["snapshot"]]
        assert prepared.job_id in records(settings.data_dir)
        assert_state_file_safe(settings.data_dir, vcsim)

        refusing[0] = False
        eventually(lambda: snapshot_names(vm) == [])
        eventually(lambda: records(settings.data_dir) == {})


def test_a_removal_that_fails_after_a_failed_copy_keeps_the_copys_error(
    hub: Hub,
    repo_dir: Path,
    vcsim: Vcsim,
    si: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fault injection: vCenter refuses RemoveSnapshot.
    def remove(snapshot: Any, what: str, timeout: float) -> None:
        raise VcenterError(f"{what} failed: fault injection")

    monkeypatch.setattr(snapshots, "remove", remove)
    name, vm = small_vm(si, "broken")
    settings = node_settings_for(hub, tmp_path / "node")
    with node_client(settings) as client:
        job_id = unique("job")
        body = {  # a target nobody listens on: the copy fails
            "job_id": job_id,
            "vm_name": name,
            "vcenter_host": vcsim.host,
            "vcenter_user": vcsim.username,
            "vcenter_password": vcsim.password,
            "vcenter_thumbprint": vcsim.thumbprint,
            "nbd_targets": "2000:nbd://127.0.0.1:9/x-disk0",
        }
        client.post("/api/v1/backup/start", json=body)
        status, _ = wait_job(client, job_id, vm)
    assert status["state"] == "failed"
    assert "nbd://" in status["error"]
    assert status["warnings"]
    assert snapshot_names(vm) == [f"sendense-{job_id}"]
    assert job_id in records(settings.data_dir)
    monkeypatch.undo()
    snapshots.remove(
        snapshots.named(vm, f"sendense-{job_id}"), "clean up", settings.snapshot_remove_timeout_s
    )
