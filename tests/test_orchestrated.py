"""The product's main job: `sendense backup run` on the hub, through the tunnel, to the
node, from the simulated vCenter; full then incremental, chains that heal."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from sendense.common.errors import NotFound
from sendense.hub.db.database import Database
from sendense.hub.db.models import RestorePoint, RestorePointDisk, Vm
from sendense.nbd.qemu_img import QemuImg
from tests.rig.cli import sendense
from tests.rig.node_tasks import snapshot_names, unique
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, fill, flat_file, reset_cbt


@pytest.fixture
def site(tmp_path: Path, vcsim: Vcsim, repo_dir: Path, site_database_url: str) -> Iterator[Site]:
    site = Site(tmp_path, database_url=site_database_url)
    try:
        site.start()
        site.enroll_and_connect()
        site.add_vcenter(vcsim)
        assert (
            site.api.post("/api/v1/repositories", json={"path": str(repo_dir)}).status_code == 201
        )
        yield site
    finally:
        site.stop()


def run_backup(site: Site, vm_name: str, *extra: str) -> str:
    done = sendense("backup", "run", vm_name, "--watch", *extra, env=site.cli_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def snapshot_of(source: Path, copy: Path) -> Path:
    shutil.copyfile(source, copy)  # the source as it was at this backup
    return copy


def points_of(site: Site, vm_name: str) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = site.api.get(f"/api/v1/restore-points?vm={vm_name}").json()
    return points


@pytest.mark.parametrize("site_database_url", ["sqlite", "postgresql"], indirect=True)
def test_full_then_incremental_chain_matches_the_source_at_each_backup(
    site: Site, vcsim: Vcsim, si: Any, repo_dir: Path, tmp_path: Path, site_database_url: str
) -> None:
    name = unique("pgtest1")
    vm = create_vm(si, name, [(2000, 64 * MiB, SCSI0), (2001, 16 * MiB, SCSI0)], cbt=True)
    sources = {k: flat_file(vcsim, vm, k) for k in (2000, 2001)}
    fill(sources[2000], [(o * MiB, bytes([o]) * MiB) for o in range(1, 64, 4)])
    fill(sources[2001], [(3 * MiB, b"\x42" * MiB)])
    first = {k: snapshot_of(p, tmp_path / f"first-{k}.raw") for k, p in sources.items()}
    out = run_backup(site, name)
    assert "complete" in out

    fill(sources[2000], [(9 * MiB, b"\xee" * 65536)])
    fill(sources[2001], [(3 * MiB, bytes(65536))])
    second = {k: snapshot_of(p, tmp_path / f"second-{k}.raw") for k, p in sources.items()}
    run_backup(site, name)

    points = points_of(site, name)
    assert [p["status"] for p in points] == ["complete", "complete"]
    full, inc = points
    assert {d["backup_type"] for d in full["disks"]} == {"full"}
    assert {d["backup_type"] for d in inc["disks"]} == {"incremental"}
    parents = {d["id"]: d for d in full["disks"]}
    for disk in inc["disks"]:
        assert disk["parent_id"] in parents
        assert disk["data_bytes"] <= 65536 + MiB
        image = repo_dir / disk["file_path"]
        backing = QemuImg().info(image)["backing-filename"]
        assert (image.parent / backing).resolve() == (
            repo_dir / parents[disk["parent_id"]]["file_path"]
        ).resolve()
        assert QemuImg().compare(second[disk["disk_key"]], image, "raw", "qcow2")
    for disk in full["disks"]:
        assert QemuImg().compare(
            first[disk["disk_key"]], repo_dir / disk["file_path"], "raw", "qcow2"
        )
    assert snapshot_names(vm) == []
    listed = sendense("backups", "list", name, env=site.cli_env())
    assert listed.returncode == 0
    assert "incremental" in listed.stdout
    # The chain's rows are in the database this site was given; the VM is free again.
    db = Database(site_database_url)
    try:
        with db.session() as s:
            row = s.scalars(select(Vm).where(Vm.name == name)).one()
            assert row.active_job_id is None
            rows = s.execute(
                select(
                    RestorePointDisk.id, RestorePointDisk.parent_id, RestorePointDisk.reserved_bytes
                )
                .join(RestorePoint)
                .where(RestorePoint.vm_id == row.id)
            ).all()
            parents_of = {disk_id: parent_id for disk_id, parent_id, _ in rows}
            reserved = {disk_id: size for disk_id, _, size in rows}
    finally:
        db.dispose()
    assert parents_of == {d["id"]: d["parent_id"] for p in points for d in p["disks"]}
    # While they ran, each layer held the node's exact plan against the repository:
    # an incremental's is its changed areas, not its parent's whole file.
    for disk in inc["disks"]:
        assert 0 < (reserved[disk["id"]] or 0) <= 65536 + MiB
    for disk in full["disks"]:
        assert 0 < (reserved[disk["id"]] or 0) <= disk["virtual_size"]


def test_a_second_request_for_the_same_vm_gets_409(site: Site, si: Any, vcsim: Vcsim) -> None:
    name = unique("busy")
    vm = create_vm(si, name, [(2000, 256 * MiB, SCSI0)], cbt=True)
    fill(flat_file(vcsim, vm, 2000), [(o * MiB, b"\x11" * MiB) for o in range(256)])
    first = site.api.post("/api/v1/backups", json={"vm": name})
    assert first.status_code == 202
    second = site.api.post("/api/v1/backups", json={"vm": name})
    assert second.status_code == 409
    assert second.json()["error"] == "vm_busy"
    assert first.json()["job_id"] in second.json()["message"]
    deadline = time.monotonic() + 120
    while site.api.get(f"/api/v1/jobs/{first.json()['job_id']}").json()["state"] not in (
        "complete",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.parametrize("site_database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_cbt_reset_turns_that_disk_into_a_full_and_the_job_succeeds(
    site: Site, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    name = unique("reset")
    vm = create_vm(si, name, [(2000, 32 * MiB, SCSI0), (2001, 16 * MiB, SCSI0)], cbt=True)
    sources = {k: flat_file(vcsim, vm, k) for k in (2000, 2001)}
    fill(sources[2000], [(0, b"\x01" * MiB), (20 * MiB, b"\x02" * MiB)])
    fill(sources[2001], [(MiB, b"\x03" * MiB)])
    run_backup(site, name)
    reset_cbt(si, vm)
    fill(sources[2000], [(20 * MiB, bytes(MiB))])  # data gone: the parent's must not show
    run_backup(site, name)
    points = points_of(site, name)
    assert [p["status"] for p in points] == ["complete", "complete"]
    for disk in points[1]["disks"]:
        assert QemuImg().compare(
            sources[disk["disk_key"]], repo_dir / disk["file_path"], "raw", "qcow2"
        )
    job = site.api.get(f"/api/v1/jobs/{points[1]['job_id']}/progress").json()
    assert all(d["backup_type"] == "full" and d["full_reason"] for d in job["disks"])
    # Recorded as read, and why, while each layer stays on its parent's chain.
    reasons = {d["disk_key"]: d["full_reason"] for d in job["disks"]}
    parents = {d["disk_key"]: d["id"] for d in points[0]["disks"]}
    assert {d["disk_key"]: (d["backup_type"], d["full_reason"]) for d in points[1]["disks"]} == {
        k: ("full", reason) for k, reason in reasons.items()
    }
    assert {d["disk_key"]: d["parent_id"] for d in points[1]["disks"]} == parents
    assert {d["chain_position"] for d in points[1]["disks"]} == {2}
    listed = sendense("backups", "list", name, env=site.cli_env())
    assert listed.returncode == 0
    assert "incremental" not in listed.stdout
    assert all(reason in listed.stdout for reason in reasons.values())


def test_vms_list_uses_the_registered_vcenter_with_its_port_and_thumbprint(
    site: Site, vcsim: Vcsim, si: Any
) -> None:
    name = unique("listed")
    create_vm(si, name, [(2000, 16 * MiB, SCSI0)], cbt=True)
    assert ":" in vcsim.host  # 127.0.0.1:PORT, registered by `vcenter add` with a thumbprint
    # The registered login: no user, node, password or thumbprint on the command line.
    for where in (["--vcenter", vcsim.host], []):
        listed = sendense("vms", "list", *where, env=site.cli_env())
        assert listed.returncode == 0, listed.stderr
        assert name in listed.stdout
    # A login given without a thumbprint takes the one registered for that host:port.
    explicit = sendense(
        "vms",
        "list",
        "--vcenter",
        vcsim.host,
        "--node",
        site.name,
        "--user",
        vcsim.username,
        env=site.cli_env() | {"SENDENSE_VCENTER_PASSWORD": vcsim.password},
    )
    assert explicit.returncode == 0, explicit.stderr
    assert name in explicit.stdout
    unknown = sendense("vms", "list", "--vcenter", "127.0.0.1:1", env=site.cli_env())
    assert unknown.returncode == NotFound.exit_code
