"""Restore-point verification: every layer of a chain read back and hashed again.

Real backups (vcsim, the node in-process, the hub's qemu-nbd exports), then the
hub's API verifies them; a flipped byte in the full's data makes the full and every
point built on it invalid, and the next backup of that disk a full."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sendense.hub.api.queries import Queries
from sendense.hub.service import Hub
from sendense.nbd.errors import NbdUriError
from sendense.nbd.protocol import parse_uri
from tests.rig.node_tasks import (
    disk_specs,
    finish_on_hub,
    node_client,
    node_settings_for,
    start_body,
    unique,
    wait_job,
)
from tests.rig.procs import pids_with
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, fill, flat_file


@pytest.fixture
def hub(db_hub: Hub) -> Hub:
    """This module's tests run on SQLite and on PostgreSQL (issue 13: they ran on
    SQLite only)."""
    return db_hub


@pytest.fixture
def node(tmp_path: Path, hub: Hub) -> Iterator[TestClient]:
    with node_client(node_settings_for(hub, tmp_path / "node")) as client:
        yield client


def backup(node: TestClient, hub: Hub, vcsim: Vcsim, vm: Any, previous: dict[int, str]) -> str:
    name = vm.name
    prepared = hub.ledger.prepare(name, disk_specs(vm), "auto")
    node.post("/api/v1/backup/start", json=start_body(vcsim, prepared, name, previous))
    status, _ = wait_job(node, prepared.job_id, vm)
    point = finish_on_hub(hub, prepared, status)
    previous.update({d["disk_key"]: d["change_id"] for d in status["disks"]})
    return point


def verify(api: TestClient, target: str) -> dict[str, Any]:
    queued = api.post("/api/v1/verify", json={"target": target})
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["job_id"]
    deadline = time.monotonic() + 60
    while True:
        job: dict[str, Any] = api.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in ("complete", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def flip_a_data_byte(image: Path) -> None:
    """Change one byte of guest data inside the QCOW2 file itself."""
    extents = json.loads(
        subprocess.run(
            ["qemu-img", "map", "--output=json", str(image)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    extent = next(e for e in extents if e["data"] and "offset" in e)
    with image.open("r+b") as handle:
        handle.seek(extent["offset"] + 4097)
        old = handle.read(1)
        handle.seek(extent["offset"] + 4097)
        handle.write(bytes([old[0] ^ 0xFF]))


def test_verify_passes_then_a_flipped_byte_invalidates_the_chain(
    node: TestClient, hub: Hub, api: TestClient, vcsim: Vcsim, si: Any, tmp_path: Path
) -> None:
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    hub.repos.add(str(repo_dir))
    vm = create_vm(
        si, unique("verify"), [(2000, 32 * MiB, SCSI0), (2001, 8 * MiB, SCSI0)], cbt=True
    )
    sources = {k: flat_file(vcsim, vm, k) for k in (2000, 2001)}
    fill(sources[2000], [(o * MiB, bytes([o + 1]) * MiB) for o in range(0, 32, 3)])
    fill(sources[2001], [(MiB, b"\x42" * 3 * MiB)])
    previous: dict[int, str] = {}
    points = [backup(node, hub, vcsim, vm, previous)]
    for round_ in range(2):
        fill(sources[2000], [(o * MiB + 65536, bytes([0x80 + round_]) * 65536) for o in (4, 9)])
        points.append(backup(node, hub, vcsim, vm, previous))

    job = verify(api, vm.name)
    assert (job["state"], job["error"]) == ("complete", None)
    for position, point_id in enumerate(points, start=1):
        point = api.get(f"/api/v1/restore-points/{point_id}").json()
        assert point["status"] == "complete"
        assert {d["chain_position"] for d in point["disks"]} == {position}
        assert point["verified_at"] is not None
        assert all(d["verified_at"] for d in point["disks"])

    full_2000 = next(
        d for d in Queries(hub.db).restore_point(points[0]).disks if d.disk_key == 2000
    )
    flip_a_data_byte(repo_dir / full_2000.file_path)
    job = verify(api, points[1])  # the middle point: its chain holds the full
    assert job["state"] == "complete"
    assert "invalid" in job["error"]
    for point_id in points:  # the full and everything built on it
        point = api.get(f"/api/v1/restore-points/{point_id}").json()
        assert point["status"] == "invalid", point
        by_key = {d["disk_key"]: d for d in point["disks"]}
        assert by_key[2000]["status"] == "invalid"
        assert by_key[2001]["status"] == "complete"
        assert "2000" in point["verify_error"]
    nxt = hub.ledger.prepare(vm.name, disk_specs(vm), "auto")
    try:
        assert {d.key: d.backup_type for d in nxt.disks} == {2000: "full", 2001: "incremental"}
    finally:
        hub.ledger.fail(nxt.job_id, "test: only the plan was wanted")
    assert pids_with(str(hub.settings.scratch_dir)) == []
    assert list(hub.settings.scratch_dir.iterdir()) == []


def test_verify_refuses_unknown_targets(api: TestClient) -> None:
    response = api.post("/api/v1/verify", json={"target": "no-such-point"})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert "no-such-point" in response.json()["message"]
    empty = api.post("/api/v1/verify", json={"target": ""})
    assert empty.status_code == 422
    assert empty.json()["error"] == "invalid_input"


def test_unix_socket_nbd_uris() -> None:
    assert parse_uri("nbd+unix:///disk?socket=/run/x.sock") == ("/run/x.sock", 0, "disk")
    with pytest.raises(NbdUriError):
        parse_uri("nbd+unix:///disk?socket=/a&socket=/b")
