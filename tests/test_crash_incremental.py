"""kill -9 of the hub during an incremental, over a complete full (issue 13, "tests
that prove it"): the full survives byte for byte and still verifies, the
incremental's file and rows are gone, and the next backup chains on the full."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sendense.common.checksum import BlockHasher, block_digest, blocks
from sendense.hub.nodes.tunnel_sshd import export_socket_root
from sendense.nbd.qemu_img import QemuImg
from tests.rig.hub import HubProcess
from tests.rig.nbd_data import expected_raw, pattern, write_through_nbd
from tests.rig.procs import pids_with, wait_gone
from tests.rig.tasks import wait_task

MiB = 1 << 20
SIZE = 16 * MiB
BLOCK = MiB
KEYS = (2000, 2001)
DISKS = [{"key": key, "capacity_bytes": SIZE} for key in KEYS]


def local(hub: HubProcess, target: dict[str, Any]) -> str:
    """The rig's hub names its NBD ports as a tunnelled node sees them (127.0.0.2);
    this test writes on the hub's own machine, to the export's socket (a job that
    names no node: the `hub` directory of the hub's export socket root)."""
    hub_id = (hub.data_dir / "hub-id").read_text().strip()
    path = export_socket_root(hub_id, hub.data_dir) / "hub" / f"{target['port']}.sock"
    return f"nbd+unix:///{target['export_name']}?socket={path}"


def written(writes: list[tuple[int, bytes]]) -> dict[str, object]:
    """What a node reports for a disk: the areas it wrote and their checksum."""
    areas = [(offset, len(data)) for offset, data in writes]
    image = bytearray(SIZE)
    for offset, data in writes:
        image[offset : offset + len(data)] = data
    hasher, zero = BlockHasher(), bytes(BLOCK)
    for offset, length in blocks(areas, BLOCK):
        hasher.add(offset, length, block_digest(bytes(image[offset : offset + length]), zero))
    return {
        "change_id": "cid-1",
        "areas": areas,
        "checksum": hasher.hexdigest(),
        "checksum_block": BLOCK,
    }


@pytest.fixture
def hub_process(tmp_path: Path, database_url: str) -> Iterator[HubProcess]:
    hub = HubProcess(tmp_path / "data", database_url)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


def test_a_hub_killed_during_an_incremental_keeps_the_full(
    hub_process: HubProcess, repo_dir: Path, tmp_path: Path
) -> None:
    token = hub_process.initial_token()
    with hub_process.client(token) as client:
        assert client.post("/api/v1/repositories", json={"path": str(repo_dir)}).is_success
        full = client.post("/api/v1/jobs", json={"vm_name": "pgtest1", "disks": DISKS}).json()
        writes = {key: [(0, pattern(key, SIZE))] for key in KEYS}
        for target in full["targets"]:
            write_through_nbd(local(hub_process, target), writes[target["disk_key"]])
        body = {"success": True, "disks": {k: written(writes[k]) for k in KEYS}}
        finished = client.post(f"/api/v1/jobs/{full['job_id']}/finish", json=body)
        assert finished.json()["state"] == "complete", finished.text
        point = client.get(f"/api/v1/restore-points/{full['restore_point_id']}").json()
        full_files = {d["disk_key"]: repo_dir / d["file_path"] for d in point["disks"]}

        incremental = client.post(
            "/api/v1/jobs", json={"vm_name": "pgtest1", "disks": DISKS}
        ).json()
        assert {t["backup_type"] for t in incremental["targets"]} == {"incremental"}
        for target in incremental["targets"]:  # half of the changes are written
            write_through_nbd(local(hub_process, target), [(4 * MiB, pattern(7, 2 * MiB))])
        servers = pids_with(str(repo_dir))
        assert len(servers) == 2

        hub_process.kill9()
        hub_process.start()

        assert wait_gone(servers, timeout=10) == []
        job = client.get(f"/api/v1/jobs/{incremental['job_id']}").json()
        assert job["state"] == "failed"
        points = client.get("/api/v1/restore-points").json()
        assert [p["id"] for p in points] == [full["restore_point_id"]]
        rows = {repo_dir / d["file_path"] for p in points for d in p["disks"]}
        assert set(repo_dir.rglob("*.qcow2")) == rows  # files match rows, nothing else
        for key, image in full_files.items():
            raw = expected_raw(tmp_path / f"{key}.raw", SIZE, writes[key])
            assert QemuImg().check(image).clean
            assert QemuImg().compare(raw, image, "raw", "qcow2")
        verify = client.post("/api/v1/verify", json={"target": full["restore_point_id"]})
        assert verify.status_code == 202, verify.text
        done = wait_task(client, verify.json()["job_id"])
        assert done["state"] == "complete", done
        checked = client.get(f"/api/v1/restore-points/{full['restore_point_id']}").json()
        assert checked["status"] == "complete"
        assert checked["verified_at"] is not None

        nxt = client.post("/api/v1/jobs", json={"vm_name": "pgtest1", "disks": DISKS}).json()
        assert {t["backup_type"] for t in nxt["targets"]} == {"incremental"}
        parents = {
            d["parent_id"]
            for d in client.get(f"/api/v1/restore-points/{nxt['restore_point_id']}").json()["disks"]
        }
        assert parents == {d["id"] for d in point["disks"]}
        client.post(f"/api/v1/jobs/{nxt['job_id']}/finish", json={"success": False})
