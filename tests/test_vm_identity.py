"""A VM is (vCenter, instance UUID), not its name (issue 13, defect 9): a VM deleted
and re-created under its name starts a new chain, a renamed one keeps its chain,
one name on two vCenters is two VMs; rows from before revision 0011 keep theirs.

The ledger and API tests run on SQLite and PostgreSQL; the vCenter ones run the
product as processes against the simulator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from sendense.common.config import load_settings
from sendense.common.errors import VmBusy
from sendense.hub.api.app import create_app
from sendense.hub.backup.disks import DiskResult, DiskSpec
from sendense.hub.db.database import Database
from sendense.hub.db.models import Job, Node, Vcenter, Vm
from sendense.hub.nodes.accounts import node_user_name
from sendense.hub.service import Hub
from sendense.nbd.qemu_img import QemuImg
from sendense.node.config import NodeSettings
from tests.conftest import make_settings
from tests.rig.node_tasks import (
    disk_specs,
    node_client,
    snapshot_names,
    start_body,
    unique,
    wait_job,
)
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, destroy_vm, fill, flat_file, vim, wait
from tests.test_migrations import SIZE, T0, make_chain
from tests.test_orchestrated import points_of, run_backup, snapshot_of

VC1, VC2 = "vc1.example:443", "vc2.example:443"
DISKS = [DiskSpec(2000, 4 * MiB)]


def add_vcenters(hub: Hub) -> None:
    """Node n1 with its system user (exports are opened for it) and two vCenters."""
    node_id = uuid.uuid4().hex
    user = node_user_name(node_id)
    hub.accounts.ensure(node_id, user)  # as enrollment does: the user first, then the row
    with hub.db.session() as s:
        node = Node(id=node_id, name="n1", system_user=user)
        s.add(node)
        s.flush()
        for host in (VC1, VC2):
            s.add(Vcenter(host=host, username="u", password_sealed="x", node_id=node.id))


@pytest.fixture
def vc_hub(db_hub: Hub, repo_dir: Path) -> Hub:
    add_vcenters(db_hub)
    db_hub.repos.add(str(repo_dir))
    return db_hub


def backup(hub: Hub, name: str, vcenter: str, uuid: str) -> tuple[str, str, str]:
    """An orchestrated backup's hub side: reserve by name, identify by the UUID the
    inventory gave, prepare, finish. (VM id, disk type, disk parent)."""
    job_id = hub.ledger.reserve(name, "auto", vcenter)
    vm_id = hub.ledger.identify(job_id, name, vcenter, uuid)
    prepared = hub.ledger.prepare(name, DISKS, "auto", job_id=job_id)
    assert prepared.vm_id == vm_id
    hub.ledger.finish(job_id, {2000: DiskResult(change_id=f"52 {job_id}/1")})
    disk = prepared.disks[0]
    return vm_id, disk.backup_type, disk.parent_id or ""


def names(hub: Hub) -> dict[str, tuple[str, str | None, str | None, str | None]]:
    with hub.db.session() as s:
        return {
            v.id: (v.name, v.vcenter_id, v.vmware_uuid, v.active_job_id) for v in s.query(Vm).all()
        }


def test_one_name_on_two_vcenters_is_two_vms_with_two_chains(vc_hub: Hub) -> None:
    first, kind, _ = backup(vc_hub, "x", VC1, "4201")
    assert kind == "full"
    # Same name, even the same instance UUID, on another vCenter: another VM.
    second, kind, _ = backup(vc_hub, "x", VC2, "4201")
    assert (second != first, kind) == (True, "full")
    again, kind, _ = backup(vc_hub, "x", VC1, "4201")
    assert (again, kind) == (first, "incremental")
    with TestClient(create_app(vc_hub)) as client:
        client.headers["Authorization"] = f"Bearer {vc_hub.tokens.create('t')}"
        vms = client.get("/api/v1/vms").json()
        assert sorted((v["name"], v["vcenter"], v["vmware_uuid"]) for v in vms) == [
            ("x", VC1, "4201"),
            ("x", VC2, "4201"),
        ]
        # A name several VMs share: the one backed up last, never a 500.
        by_name = client.get("/api/v1/restore-points", params={"vm": "x"})
        assert by_name.status_code == 200
        assert {p["vm_id"] for p in by_name.json()} == {first}
        by_id = client.get("/api/v1/restore-points", params={"vm": second}).json()
        assert [p["vm_id"] for p in by_id] == [second]
        assert client.get(f"/api/v1/vms/{second}").json()["vcenter"] == VC2
        assert client.get("/api/v1/vms/x").json()["id"] == first


def test_a_vm_recreated_under_its_name_gets_a_new_chain_and_the_old_one_stays(
    vc_hub: Hub,
) -> None:
    old, _, _ = backup(vc_hub, "x", VC1, "4201")
    new, kind, parent = backup(vc_hub, "x", VC1, "4299")  # deleted, made again
    assert (new != old, kind, parent) == (True, "full", "")
    rows = names(vc_hub)
    assert rows[old] == ("x", rows[old][1], "4201", None)  # kept, unlocked
    assert rows[new][2:] == ("4299", None)
    again, kind, _ = backup(vc_hub, "x", VC1, "4299")
    assert (again, kind) == (new, "incremental")
    assert len(rows) == 2


def test_a_renamed_vm_keeps_its_chain(vc_hub: Hub) -> None:
    vm, _, _ = backup(vc_hub, "before", VC1, "4201")
    again, kind, parent = backup(vc_hub, "after", VC1, "4201")
    assert (again, kind) == (vm, "incremental")
    assert parent
    # The row reserve() made for the new name was only a placeholder: gone.
    assert [(n, u) for n, _, u, _ in names(vc_hub).values()] == [("after", "4201")]


def test_the_lock_moves_atomically_or_the_job_fails(vc_hub: Hub) -> None:
    vm, _, _ = backup(vc_hub, "x", VC1, "4201")
    # The VM, renamed, is busy (say a verification): the backup under its new name
    # cannot take its row over and keeps the lock of the row it reserved until it fails.
    with vc_hub.db.session() as s:
        s.get_one(Vm, vm).active_job_id = "other"
    job_id = vc_hub.ledger.reserve("y", "auto", VC1)
    with pytest.raises(VmBusy):
        vc_hub.ledger.identify(job_id, "y", VC1, "4201")
    rows = names(vc_hub)
    assert rows[vm] == ("x", rows[vm][1], "4201", "other")
    with vc_hub.db.session() as s:
        placeholder = s.get_one(Job, job_id).vm_id
    assert placeholder is not None
    assert placeholder != vm
    assert rows[placeholder][3] == job_id
    vc_hub.ledger.fail(job_id, "test")
    assert names(vc_hub)[placeholder][3] is None


def test_a_prepared_job_from_outside_names_its_vm_by_vcenter_and_uuid(vc_hub: Hub) -> None:
    with TestClient(create_app(vc_hub)) as client:
        client.headers["Authorization"] = f"Bearer {vc_hub.tokens.create('t')}"

        def prepare(**fields: Any) -> Any:
            body = {"vm_name": "seed", "disks": [{"key": 2000, "capacity_bytes": 4 * MiB}]}
            return client.post("/api/v1/jobs", json=body | fields)

        def finish(job: dict[str, Any]) -> None:
            done = client.post(
                f"/api/v1/jobs/{job['job_id']}/finish",
                json={"success": True, "disks": {"2000": {"change_id": "52 a/1"}}},
            )
            assert done.status_code == 200, done.text

        # By name only, as the seed's caller always did: one chain.
        plain = prepare()
        assert plain.status_code == 201
        finish(plain.json())
        second = prepare().json()
        assert second["targets"][0]["backup_type"] == "incremental"
        finish(second)
        # The same name with a vCenter and UUID adopts that row, then stays with it.
        third = prepare(vcenter=VC1, vm_uuid="4201").json()
        assert third["targets"][0]["backup_type"] == "incremental"
        finish(third)
        other = prepare(vcenter=VC2, vm_uuid="4201").json()
        assert other["targets"][0]["backup_type"] == "full"
        finish(other)
        renamed = prepare(vm_name="seed2", vcenter=VC1, vm_uuid="4201").json()
        assert renamed["targets"][0]["backup_type"] == "incremental"
        finish(renamed)
        assert prepare(vcenter="nowhere:443").status_code == 404
        assert prepare(vm_uuid="u" * 65).status_code == 422
        assert prepare(vcenter="").status_code == 422


def test_the_identity_is_unique_per_vcenter(vc_hub: Hub) -> None:
    with vc_hub.db.session() as s:
        vc1 = s.query(Vcenter).filter_by(host=VC1).one().id
        s.add(Vm(name="a", vcenter_id=vc1, vmware_uuid="u1"))
        s.add(Vm(name="a", vcenter_id=vc1, vmware_uuid="u2"))  # a name is not unique
    with pytest.raises(IntegrityError), vc_hub.db.session() as s:
        s.add(Vm(name="b", vcenter_id=vc1, vmware_uuid="u1"))


# -- the migration ------------------------------------------------------------


def rows_at_0010(url: str, repo: Path, files: tuple[str, str]) -> None:
    """Two nodes, each with a vCenter; "vm1" (node n1) with a full and an
    incremental, "vm2" without a node, and a VM whose name repeats nowhere."""
    db = Database(url)
    db.migrate("0010")
    rows: dict[str, list[dict[str, object]]] = {
        "repositories": [{"id": "r1", "name": "main", "path": str(repo), "created_at": T0}],
        "nodes": [
            {"id": "n1", "name": "node1", "revoked": False, "connected": False, "created_at": T0},
            {"id": "n2", "name": "node2", "revoked": False, "connected": False, "created_at": T0},
        ],
        "vcenters": [
            {"id": "v1", "host": VC1, "node_id": "n1"},
            {"id": "v2", "host": VC2, "node_id": "n2"},
        ],
        "vms": [
            {"id": "vm1", "name": "pgtest1", "node_id": "n1", "created_at": T0},
            {"id": "vm2", "name": "other", "node_id": None, "created_at": T0},
        ],
        "jobs": [
            {"id": "j1", "vm_id": "vm1", "kind": "backup", "backup_type": "full"},
            {"id": "j2", "vm_id": "vm1", "kind": "backup", "backup_type": "auto"},
        ],
        "restore_points": [
            {
                "id": f"p{i}",
                "vm_id": "vm1",
                "job_id": f"j{i}",
                "repository_id": "r1",
                "created_at": T0 + timedelta(days=i),
                "completed_at": T0 + timedelta(days=i),
            }
            for i in (1, 2)
        ],
        "restore_point_disks": [
            {"id": "d1", "restore_point_id": "p1", "parent_id": None, "file_path": files[0]},
            {"id": "d2", "restore_point_id": "p2", "parent_id": "d1", "file_path": files[1]},
        ],
    }
    defaults: dict[str, dict[str, object]] = {
        "vcenters": {"username": "u", "password_sealed": "x", "created_at": T0},
        "jobs": {"state": "complete", "created_at": T0},
        "restore_points": {"status": "complete"},
        "restore_point_disks": {
            "disk_key": 2000,
            "backup_type": "full",
            "virtual_size": SIZE,
            "status": "complete",
            "change_id": "52 old/1",
        },
    }
    with db.engine.begin() as conn:
        for table, values in rows.items():
            for row in values:
                row = defaults.get(table, {}) | row
                names_ = ", ".join(row)
                marks = ", ".join(f":{k}" for k in row)
                conn.execute(text(f"INSERT INTO {table} ({names_}) VALUES ({marks})"), row)
    db.dispose()


@pytest.fixture
def upgraded(tmp_path: Path, database_url: str, repo_dir: Path) -> Iterator[Hub]:
    files = make_chain(repo_dir)
    (repo_dir / ".sendense-repository").write_text("r1\n")
    rows_at_0010(database_url, repo_dir, files)
    hub = Hub.open(make_settings(tmp_path, database_url))  # migrates to head
    try:
        yield hub
    finally:
        hub.reconcile("test ended")
        hub.close()


def test_revision_0011_keys_existing_vms_without_breaking_their_chains(
    upgraded: Hub, repo_dir: Path
) -> None:
    rows = names(upgraded)
    # vm1's node reaches one vCenter: that one; vm2's cannot be told (two vCenters).
    assert rows == {"vm1": ("pgtest1", "v1", None, None), "vm2": ("other", None, None, None)}
    with TestClient(create_app(upgraded)) as client:
        client.headers["Authorization"] = f"Bearer {upgraded.tokens.create('t')}"
        points = client.get("/api/v1/restore-points", params={"vm": "pgtest1"}).json()
        assert [(p["id"], p["status"]) for p in points] == [("p1", "complete"), ("p2", "complete")]
        raw = client.get("/api/v1/restore-points/p2/disks/2000/download")
        expected = bytearray(b"\x11" * SIZE)
        expected[MiB : 2 * MiB] = b"\x22" * MiB
        assert raw.content == bytes(expected)
    # The next backup from that vCenter records the UUID and goes on with the chain.
    job_id = upgraded.ledger.reserve("pgtest1", "auto", VC1)
    assert upgraded.ledger.identify(job_id, "pgtest1", VC1, "4201") == "vm1"
    prepared = upgraded.ledger.prepare("pgtest1", [DiskSpec(2000, SIZE)], job_id=job_id)
    assert (prepared.disks[0].backup_type, prepared.disks[0].parent_id) == ("incremental", "d2")
    upgraded.ledger.finish(job_id, {2000: DiskResult(change_id="52 new/1")})
    image = upgraded.repos.resolve(upgraded.repos.get("r1"), prepared.disks[0].file_path)
    assert QemuImg().compare(repo_dir / "vm1/2000/inc.qcow2", image, "qcow2", "qcow2")
    # A VM whose vCenter was not known is adopted by the first that backs it up.
    job_id = upgraded.ledger.reserve("other", "auto", VC2)
    assert upgraded.ledger.identify(job_id, "other", VC2, "4202") == "vm2"
    upgraded.ledger.fail(job_id, "test")
    assert names(upgraded)["vm2"] == ("other", "v2", "4202", None)


# -- against the simulated vCenter --------------------------------------------


@pytest.fixture
def site(tmp_path: Path, vcsim: Vcsim, repo_dir: Path) -> Iterator[Site]:
    site = Site(tmp_path)
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


def test_a_vm_deleted_and_recreated_under_its_name_starts_a_new_chain(
    site: Site, vcsim: Vcsim, si: Any, repo_dir: Path, tmp_path: Path
) -> None:
    name = unique("again")
    vm = create_vm(si, name, [(2000, 8 * MiB, SCSI0)], cbt=True)
    fill(flat_file(vcsim, vm, 2000), [(MiB, b"\x11" * MiB)])
    first_data = snapshot_of(flat_file(vcsim, vm, 2000), tmp_path / "first.raw")
    run_backup(site, name)
    first_uuid = vm.config.instanceUuid
    destroy_vm(si, vm)
    vm = create_vm(si, name, [(2000, 8 * MiB, SCSI0)], cbt=True)
    # vSphere gives a new VM a new instance UUID; vcsim derives it from the VM's
    # path, the same for the same name: give it one as vSphere would.
    wait(si, vm.ReconfigVM_Task(vim.vm.ConfigSpec(instanceUuid=str(uuid.uuid4()))))
    assert vm.config.instanceUuid != first_uuid
    fill(flat_file(vcsim, vm, 2000), [(2 * MiB, b"\x22" * MiB)])
    run_backup(site, name)

    vms = [v for v in site.api.get("/api/v1/vms").json() if v["name"] == name]
    assert sorted(v["vmware_uuid"] for v in vms) == sorted([first_uuid, vm.config.instanceUuid])
    by_uuid = {v["vmware_uuid"]: v["id"] for v in vms}
    old = site.api.get("/api/v1/restore-points", params={"vm": by_uuid[first_uuid]}).json()
    new = points_of(site, name)  # the name: the VM backed up last
    assert [p["vm_id"] for p in new] == [by_uuid[vm.config.instanceUuid]]
    assert [(d["backup_type"], d["parent_id"]) for d in new[0]["disks"]] == [("full", None)]
    assert QemuImg().compare(
        flat_file(vcsim, vm, 2000), repo_dir / new[0]["disks"][0]["file_path"], "raw", "qcow2"
    )
    # The deleted VM's point is still there, and reads as the VM did.
    assert [p["status"] for p in old] == ["complete"]
    raw = site.api.get(f"/api/v1/restore-points/{old[0]['id']}/disks/2000/download")
    assert raw.status_code == 200
    assert raw.content == first_data.read_bytes()


def test_a_renamed_vm_goes_on_with_its_chain(
    site: Site, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    name, renamed = unique("before"), unique("after")
    vm = create_vm(si, name, [(2000, 8 * MiB, SCSI0)], cbt=True)
    source = flat_file(vcsim, vm, 2000)
    fill(source, [(0, b"\x33" * MiB)])
    run_backup(site, name)
    wait(si, vm.Rename_Task(renamed))
    fill(source, [(3 * MiB, b"\x44" * 65536)])
    run_backup(site, renamed)

    points = points_of(site, renamed)
    assert len(points) == 2
    assert len({p["vm_id"] for p in points}) == 1
    inc = points[1]["disks"][0]
    assert (inc["backup_type"], inc["parent_id"]) == ("incremental", points[0]["disks"][0]["id"])
    assert QemuImg().compare(source, repo_dir / inc["file_path"], "raw", "qcow2")
    vm_row = site.api.get(f"/api/v1/vms/{points[0]['vm_id']}").json()
    assert (vm_row["name"], vm_row["vmware_uuid"]) == (renamed, vm.config.instanceUuid)
    assert site.api.get(f"/api/v1/vms/{name}").status_code == 404


def test_the_node_refuses_a_vm_that_is_not_the_one_the_hub_planned_for(
    hub: Hub, repo_dir: Path, vcsim: Vcsim, si: Any, tmp_path: Path
) -> None:
    """Re-created between the hub's inventory and the node's snapshot: nothing read."""
    hub.repos.add(str(repo_dir))
    name = unique("swapped")
    vm = create_vm(si, name, [(2000, 4 * MiB, SCSI0)], cbt=True)
    prepared = hub.ledger.prepare(name, disk_specs(vm), "full")
    settings = load_settings(NodeSettings, data_dir=tmp_path / "node")
    with node_client(settings) as node:
        body = start_body(vcsim, prepared, name, {}) | {"vm_uuid": "not-this-vm"}
        assert node.post("/api/v1/backup/start", json=body).status_code == 202
        status, watch = wait_job(node, prepared.job_id, vm)
    hub.ledger.fail(prepared.job_id, "the node refused it")
    assert status["state"] == "failed"
    assert "not not-this-vm as planned" in status["error"]
    assert watch.seen == set()
    assert snapshot_names(vm) == []
