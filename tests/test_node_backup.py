"""The node against the vCenter simulator, writing into the hub's qemu-nbd exports.

The seed's request body, one snapshot per job, full and CBT-incremental reads,
holes, a disk on a second controller, and every way it can go wrong."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sendense.hub.api.queries import Queries
from sendense.hub.service import Hub
from sendense.nbd.qemu_img import QemuImg
from sendense.node.config import NodeSettings
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
from tests.rig.procs import pids_with
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, SCSI1, MiB, create_vm, fill, flat_file

BLOCK = bytes(range(256)) * 256  # 64 KiB of "guest data"


@pytest.fixture
def node_settings(tmp_path: Path, hub: Hub) -> NodeSettings:
    return node_settings_for(hub, tmp_path / "node")


@pytest.fixture
def node(node_settings: NodeSettings) -> Iterator[TestClient]:
    with node_client(node_settings) as client:
        yield client


@pytest.fixture
def hub_repo(hub: Hub, repo_dir: Path) -> Hub:
    hub.repos.add(str(repo_dir))
    return hub


def guest_data(path: Path, offsets: list[int], seed: int = 1) -> None:
    fill(path, [(off, bytes((b + seed) % 256 for b in BLOCK[:256]) * 256) for off in offsets])


def image_of(repo_dir: Path, hub: Hub, point_id: str, key: int) -> Path:
    point = Queries(hub.db).restore_point(point_id)
    return repo_dir / next(d.file_path for d in point.disks if d.disk_key == key)


def test_seed_request_backs_up_two_disks_with_one_snapshot(
    node: TestClient,
    hub_repo: Hub,
    vcsim: Vcsim,
    si: Any,
    repo_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = unique("pgtest1")
    vm = create_vm(si, name, [(2000, 48 * MiB, SCSI0), (2001, 16 * MiB, SCSI0)], cbt=True)
    guest_data(flat_file(vcsim, vm, 2000), [0, 5 * MiB, 47 * MiB])
    guest_data(flat_file(vcsim, vm, 2001), [64 * 1024, 15 * MiB], seed=7)
    prepared = hub_repo.ledger.prepare(name, disk_specs(vm), "full")
    with caplog.at_level(logging.DEBUG):
        response = node.post("/api/v1/backup/start", json=start_body(vcsim, prepared, name, {}))
        assert response.status_code == 202, response.text
        assert response.json() == {"job_id": prepared.job_id, "status": "running"}
        status, watch = wait_job(node, prepared.job_id, vm)
    assert status["state"] == "complete", status
    # The one snapshot the node took (the poll may be too slow to see a quick one).
    assert status["snapshot"] == f"sendense-{prepared.job_id}"
    assert watch.seen <= {status["snapshot"]}
    assert watch.most_at_once <= 1
    assert snapshot_names(vm) == []
    assert vcsim.password not in caplog.text
    point = finish_on_hub(hub_repo, prepared, status)
    for key in (2000, 2001):
        assert QemuImg().compare(
            flat_file(vcsim, vm, key), image_of(repo_dir, hub_repo, point, key), "raw", "qcow2"
        )
    disks = {d["disk_key"]: d for d in status["disks"]}
    assert disks[2000]["change_id"]
    assert disks[2000]["checksum"].startswith("blake3-blocks:")
    assert disks[2000]["bytes_written"] <= 3 * 64 * 1024
    assert disks[2000]["bytes_done"] == disks[2000]["bytes_total"]
    assert pids_with(str(repo_dir)) == []


def test_incremental_writes_only_changed_areas_and_the_chain_matches(
    node: TestClient, hub_repo: Hub, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    name = unique("inc")
    vm = create_vm(si, name, [(2000, 64 * MiB, SCSI0)], cbt=True)
    source = flat_file(vcsim, vm, 2000)
    guest_data(source, [i * MiB for i in range(0, 64, 2)])
    first = hub_repo.ledger.prepare(name, disk_specs(vm), "auto")
    node.post("/api/v1/backup/start", json=start_body(vcsim, first, name, {}))
    status, _ = wait_job(node, first.job_id, vm)
    finish_on_hub(hub_repo, first, status)
    previous = {d["disk_key"]: d["change_id"] for d in status["disks"]}

    guest_data(source, [3 * MiB, 10 * MiB + 65536], seed=9)  # 2 x 64 KiB changed
    fill(source, [(20 * MiB, bytes(65536))])  # data overwritten with zeroes
    second = hub_repo.ledger.prepare(name, disk_specs(vm), "auto")
    assert [d.backup_type for d in second.disks] == ["incremental"]
    node.post("/api/v1/backup/start", json=start_body(vcsim, second, name, previous))
    status, watch = wait_job(node, second.job_id, vm)
    assert status["state"] == "complete", status
    assert status["snapshot"] == f"sendense-{second.job_id}"
    assert watch.seen <= {status["snapshot"]}
    assert snapshot_names(vm) == []
    disk = status["disks"][0]
    assert disk["backup_type"] == "incremental"
    assert disk["bytes_written"] <= 2 * 65536 + MiB
    point = finish_on_hub(hub_repo, second, status)
    overlay = image_of(repo_dir, hub_repo, point, 2000)
    assert QemuImg().info(overlay)["backing-filename"].endswith(".qcow2")
    assert QemuImg().compare(source, overlay, "raw", "qcow2")


def test_sparse_disk_sends_little_data_and_second_controller_key_is_kept(
    node: TestClient, hub_repo: Hub, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    name = unique("sparse")
    vm = create_vm(si, name, [(2000, 100 * MiB, SCSI0), (2016, 8 * MiB, SCSI1)], cbt=True)
    guest_data(
        flat_file(vcsim, vm, 2000),
        [i * MiB for i in range(0, 100, 10)]
        + [i * MiB + 65536 * j for i in range(0, 100, 10) for j in range(1, 16)],
    )  # 10 MiB of data in 100 MiB
    guest_data(flat_file(vcsim, vm, 2016), [7 * MiB], seed=3)
    prepared = hub_repo.ledger.prepare(name, disk_specs(vm), "full")
    assert "2016:nbd://" in prepared.nbd_targets
    node.post("/api/v1/backup/start", json=start_body(vcsim, prepared, name, {}))
    status, _ = wait_job(node, prepared.job_id, vm)
    point = finish_on_hub(hub_repo, prepared, status)
    disks = {d["disk_key"]: d for d in status["disks"]}
    assert disks[2000]["bytes_written"] <= 0.11 * 100 * MiB
    assert disks[2016]["bytes_written"] == 65536
    for key in (2000, 2016):
        assert QemuImg().compare(
            flat_file(vcsim, vm, key), image_of(repo_dir, hub_repo, point, key), "raw", "qcow2"
        )
