"""Whole-VM restore to vCenter: every point of a chain comes back as a VM whose
disks keep their keys, capacities and controllers, and whose flat files are the
source's bytes as they were at that backup. Bad input changes nothing.

The chain test runs the product as processes (hub, node, tunnel: tests/rig/site.py);
the others run the hub's restore service and the node's API in-process, the
service reaching the node through the node's ASGI app instead of the tunnel."""

from __future__ import annotations

import contextlib
import filecmp
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import update

from sendense.common.contract import VcenterLogin, VmInventory
from sendense.hub.db.models import RestorePoint, RestorePointDisk
from sendense.hub.nodes.client import NodeClient
from sendense.hub.nodes.registry import NodeInfo
from sendense.hub.nodes.vcenters import VcenterService
from sendense.hub.restore.to_vcenter import VmRestoreRunner
from sendense.hub.service import Hub
from sendense.node.vmware import connection
from tests.rig.cli import sendense
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
from tests.rig.site import Site
from tests.rig.tasks import wait_task
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import (
    SCSI0,
    SCSI1,
    MiB,
    create_vm,
    destroy_vm,
    fill,
    flat_file,
    vim,
    virtual_disks,
    wait,
)

DISKS = [(2000, 24 * MiB, SCSI0), (2016, 8 * MiB, SCSI1)]


def find_vm(si: Any, name: str) -> Any:
    return si.content.searchIndex.FindByInventoryPath(f"DC0/vm/{name}")


def vm_names(si: Any) -> set[str]:
    view = si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vim.VirtualMachine], True
    )
    try:
        return {vm.name for vm in view.view}
    finally:
        view.Destroy()


def drop_vm(si: Any, name: str) -> None:
    vm = find_vm(si, name)
    if vm is not None:
        if str(vm.runtime.powerState) != "poweredOff":
            wait(si, vm.PowerOffVM_Task())
        destroy_vm(si, vm)


def layout_of(vm: Any) -> dict[int, tuple[int, int, int, str]]:
    """key -> (capacity, controller bus, unit, controller type) of a VM's disks."""
    devices = {d.key: d for d in vm.config.hardware.device}
    return {
        key: (
            int(d.capacityInBytes),
            devices[d.controllerKey].busNumber,
            d.unitNumber,
            type(devices[d.controllerKey]).__name__.rsplit(".", 1)[-1],
        )
        for key, d in virtual_disks(vm.config).items()
    }


def assert_restored(vcsim: Vcsim, si: Any, name: str, source: Any, copies: dict[int, Path]) -> None:
    vm = find_vm(si, name)
    assert vm is not None, f"no VM {name}"
    assert layout_of(vm) == layout_of(source)
    assert str(vm.runtime.powerState) == "poweredOff"
    for key, copy in copies.items():
        restored = flat_file(vcsim, vm, key)
        assert restored.stat().st_size == copy.stat().st_size
        assert filecmp.cmp(copy, restored, shallow=False), f"{name} disk {key} differs"


def write_round(sources: dict[int, Path], round_: int) -> None:
    """Guest writes: new data, overwritten data and zeroed data on both disks."""
    fill(
        sources[2000],
        [(o * MiB + round_ * 8192, bytes([0x10 + round_]) * 65536) for o in range(round_, 24, 5)],
    )
    fill(
        sources[2016],
        [
            ((round_ + 1) * MiB, bytes(MiB if round_ else 0)),
            (5 * MiB, bytes([0xA0 + round_]) * 4096),
        ],
    )


def keep(sources: dict[int, Path], directory: Path, label: str) -> dict[int, Path]:
    """The sources as they are now (the data a restore of the next point must give)."""
    copies = {}
    for key, path in sources.items():
        copies[key] = directory / f"{label}-{key}.raw"
        shutil.copyfile(path, copies[key])
    return copies


# -- the chain, through the real processes ------------------------------------


@pytest.fixture
def site(tmp_path: Path, vcsim: Vcsim, repo_dir: Path, site_database_url: str) -> Iterator[Site]:
    site = Site(tmp_path, database_url=site_database_url)
    try:
        site.start()
        site.enroll_and_connect()
        site.add_vcenter(vcsim)
        added = site.api.post("/api/v1/repositories", json={"path": str(repo_dir)})
        assert added.status_code == 201, added.text
        yield site
    finally:
        site.stop()


@pytest.mark.parametrize("site_database_url", ["sqlite", "postgresql"], indirect=True)
def test_each_point_of_a_chain_restores_as_a_vm_identical_to_the_source_then(
    site: Site, vcsim: Vcsim, si: Any, tmp_path: Path
) -> None:
    name = unique("chain")
    source = create_vm(si, name, DISKS, cbt=True)
    sources = {key: flat_file(vcsim, source, key) for key, _, _ in DISKS}
    fill(sources[2000], [(o * MiB, bytes([o + 1]) * MiB) for o in range(0, 24, 3)])
    fill(sources[2016], [(MiB, b"\x42" * 3 * MiB)])
    copies = []
    for round_ in range(4):
        if round_:
            write_round(sources, round_)
        copies.append(keep(sources, tmp_path, f"point{round_}"))
        done = sendense("backup", "run", name, "--watch", env=site.cli_env())
        assert done.returncode == 0, done.stdout + done.stderr
    points = site.api.get("/api/v1/restore-points", params={"vm": name}).json()
    assert [p["status"] for p in points] == ["complete"] * 4
    assert {d["backup_type"] for p in points[1:] for d in p["disks"]} == {"incremental"}

    restored = [f"{name}-r{i}" for i in range(4)]
    try:
        jobs = []
        for point, new in zip(points[:3], restored, strict=False):
            queued = site.api.post(
                f"/api/v1/restore-points/{point['id']}/restore-vm",
                json={"name": new, "datastore": "LocalDS_0"},
            )
            assert queued.status_code == 202, queued.text
            assert queued.json()["replaces"] is False
            jobs.append(queued.json()["job_id"])
        # The newest through the CLI, watched to the end.
        cli = sendense(
            "restore", "vm", points[3]["id"], "--name", restored[3], "--watch", env=site.cli_env()
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert f"VM DC0/vm/{restored[3]} restored (powered off)" in cli.stdout
        for job_id in jobs:
            job = site.wait_job(job_id)
            assert (job["state"], job["error"]) == ("complete", None)
        for new, expected in zip(restored, copies, strict=True):
            assert_restored(vcsim, si, new, source, expected)
        progress = site.api.get(f"/api/v1/jobs/{jobs[0]}/restore-progress").json()
        assert {d["disk_key"]: d["bytes_done"] for d in progress["disks"]} == {
            key: capacity for key, capacity, _ in DISKS
        }
        rate = sum(d["bytes_done"] for d in progress["disks"]) / max(
            d["seconds"] for d in progress["disks"]
        )
        print(f"restore rate {rate / 1e6:.0f} MB/s")

        # A name in use: one line on stderr and the conflict's exit code.
        refused = sendense(
            "restore", "vm", points[0]["id"], "--name", restored[0], env=site.cli_env()
        )
        assert refused.returncode == 4, refused.stdout + refused.stderr
        assert refused.stderr.count("\n") == 1
        assert "exists" in refused.stderr
        assert snapshot_names(source) == []
        listed = site.api.get("/api/v1/jobs").json()
        assert {j["state"] for j in listed if j["kind"] in ("restore", "access")} == {"complete"}
        assert site.api.get("/api/v1/ports").json()["used"] == 0
        assert pids_with(str(tmp_path)) == []
    finally:
        for new in restored:
            drop_vm(si, new)


# -- the hub's service and the node's API in-process --------------------------


class InProcessNode(NodeClient):
    """The hub's node client over the node's ASGI app instead of the tunnel."""

    def __init__(self, http: TestClient) -> None:
        self.name = "in-process"
        self.url = str(http.base_url)
        self._http = http

    def close(self) -> None:
        pass  # the test's client outlives the job


class FixedVcenter(VcenterService):
    def __init__(self, hub: Hub, vcsim: Vcsim) -> None:
        super().__init__(hub.db, hub.nodes.box)
        self.vcsim = vcsim

    def login(self, host: str | None) -> tuple[VcenterLogin, str]:
        vc = self.vcsim
        return VcenterLogin(
            vcenter_host=vc.host,
            vcenter_user=vc.username,
            vcenter_password=SecretStr(vc.password),
            vcenter_thumbprint=vc.thumbprint,
        ), "in-process"


class LocalRestores(VmRestoreRunner):
    def __init__(self, hub: Hub, node: TestClient, vcsim: Vcsim) -> None:
        super().__init__(
            hub.db, hub.access, hub.vcenters, hub.connector, poll=0.05, node_timeout=10
        )
        self.node = node
        self.vcenters = FixedVcenter(hub, vcsim)

    def _client(self, node: str) -> NodeClient:
        return InProcessNode(self.node)

    def _reader(self, node: str) -> NodeInfo | None:
        return None  # no enrolled node: the exports are the hub's own (hub_export_dir)


@pytest.fixture
def node(tmp_path: Path, hub: Hub) -> Iterator[TestClient]:
    with node_client(node_settings_for(hub, tmp_path / "node")) as client:
        yield client


@pytest.fixture
def restores(api: TestClient, hub: Hub, node: TestClient, vcsim: Vcsim, repo_dir: Path) -> None:
    hub.repos.add(str(repo_dir))
    hub.restores = LocalRestores(hub, node, vcsim)


def backup(hub: Hub, node: TestClient, vcsim: Vcsim, vm: Any, *, with_layout: bool = True) -> str:
    login = {
        "vcenter_host": vcsim.host,
        "vcenter_user": vcsim.username,
        "vcenter_password": vcsim.password,
        "vcenter_thumbprint": vcsim.thumbprint,
    }
    inventory = VmInventory.model_validate(
        node.post("/api/v1/vms/inventory", json=login | {"vm_name": vm.name}).json()
    )
    layout = inventory.layout() if with_layout else None
    prepared = hub.ledger.prepare(vm.name, disk_specs(vm), "auto", layout=layout)
    node.post("/api/v1/backup/start", json=start_body(vcsim, prepared, vm.name, {}))
    status, _ = wait_job(node, prepared.job_id, vm)
    return finish_on_hub(hub, prepared, status)


@contextlib.contextmanager
def tiny_datastore(si: Any, directory: Path, size: str = "4m") -> Iterator[str]:
    """A datastore with a few MiB free: a tmpfs mount (needs root)."""
    directory.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True
    )
    name = unique("TinyDS")
    try:
        host = si.content.rootFolder.childEntity[0].hostFolder.childEntity[0].host[0]
        datastore = host.configManager.datastoreSystem.CreateLocalDatastore(name, str(directory))
        try:
            yield name
        finally:
            wait(si, datastore.Destroy_Task())
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def count_vcenter_connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hosts of every vCenter connection the node opens from now on."""
    opened: list[str] = []
    real = connection.SmartStubAdapter  # type: ignore[attr-defined]

    def counted(**kwargs: Any) -> Any:
        opened.append(kwargs["host"])
        return real(**kwargs)

    monkeypatch.setattr(connection, "SmartStubAdapter", counted)
    return opened


def test_bad_input_is_refused_and_changes_nothing(
    restores: None,
    api: TestClient,
    hub: Hub,
    node: TestClient,
    vcsim: Vcsim,
    si: Any,
    repo_dir: Path,
    tmp_path: Path,
) -> None:
    source = create_vm(si, unique("bad"), DISKS, cbt=True)
    fill(flat_file(vcsim, source, 2000), [(0, b"\x01" * MiB)])
    point = backup(hub, node, vcsim, source)
    running = create_vm(si, unique("running"), [(2000, MiB, SCSI0)], power_on=True)
    legacy = create_vm(si, unique("nolayout"), [(2000, MiB, SCSI0)])
    old_point = backup(hub, node, vcsim, legacy, with_layout=False)
    with hub.db.session() as s:  # a key outside the SCSI numbering: no layout to derive
        s.execute(
            update(RestorePointDisk)
            .where(RestorePointDisk.restore_point_id == old_point)
            .values(disk_key=16000)
        )
    files = sorted(p for p in repo_dir.rglob("*") if p.is_file())
    before = vm_names(si)
    jobs_before = len(api.get("/api/v1/jobs").json())

    def refused(point_id: str, status: int, code: str, key: str, **body: Any) -> None:
        answer = api.post(
            f"/api/v1/restore-points/{point_id}/restore-vm", json={"name": unique("new")} | body
        )
        assert answer.status_code == status, answer.text
        assert answer.json()["error"] == code, answer.json()
        assert key in answer.json()["message"], answer.json()

    refused("no-such-point", 404, "not_found", "no-such-point")
    refused(point, 409, "conflict", "exists", name=source.name)
    refused(point, 409, "conflict", "exists", name=running.name)
    refused(point, 409, "conflict", "poweredOn", name=running.name, force=True)
    refused(point, 404, "not_found", "NoSuchDS", datastore="NoSuchDS")
    refused(point, 404, "not_found", "no/such/folder", folder="no/such/folder")
    refused(old_point, 409, "conflict", "layout")
    refused(point, 422, "invalid_input", "name", name="bad/name")
    if Path("/proc/self").stat().st_uid == 0:
        with tiny_datastore(si, tmp_path / "tiny") as tiny:
            refused(point, 409, "insufficient_space", tiny, datastore=tiny)

    assert vm_names(si) == before
    assert str(running.runtime.powerState) == "poweredOn"
    assert len(api.get("/api/v1/jobs").json()) == jobs_before
    assert sorted(p for p in repo_dir.rglob("*") if p.is_file()) == files
    assert api.get("/api/v1/ports").json()["used"] == 0
    assert pids_with(str(tmp_path)) == []
    wait(si, running.PowerOffVM_Task())
    for vm in (running, legacy):
        destroy_vm(si, vm)


def test_force_replaces_a_powered_off_vm_and_power_on_starts_it(
    restores: None,
    api: TestClient,
    hub: Hub,
    node: TestClient,
    vcsim: Vcsim,
    si: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stubs = count_vcenter_connections(monkeypatch)
    name = unique("force")
    source = create_vm(si, name, DISKS, cbt=True)
    sources = {key: flat_file(vcsim, source, key) for key, _, _ in DISKS}
    fill(sources[2000], [(3 * MiB, b"\x33" * MiB)])
    fill(sources[2016], [(0, b"\x44" * 4096)])
    copies = keep(sources, tmp_path, "at-backup")
    point = backup(hub, node, vcsim, source, with_layout=False)  # derived from the keys
    fill(sources[2000], [(3 * MiB, b"\x55" * MiB)])  # the VM moves on, then is restored
    old_ref = source._moId

    queued = api.post(
        f"/api/v1/restore-points/{point}/restore-vm",
        json={"name": name, "force": True, "power_on": True, "datastore": "LocalDS_0"},
    )
    assert queued.status_code == 202, queued.text
    assert queued.json()["replaces"] is True
    assert "derived" in queued.json()["warnings"][0]
    job = wait_task(api, queued.json()["job_id"])
    assert (job["state"], job["error"]) == ("complete", None)
    # The backup's two disk streams and the restore's two took the node's memory
    # budget, and gave it back...
    runner = node.app.state.node.runner  # type: ignore[attr-defined]
    assert (runner.limits.budget.grants, runner.limits.budget.held) == (4, 0)
    # The backup's inventory and start, the restore's check, start and copy: one
    # vCenter login, kept by the node (vmware/sessions.py).
    assert (runner.sessions.logins, len(stubs)) == (1, 1)
    replaced = find_vm(si, name)
    try:
        assert replaced._moId != old_ref  # a new VM, not the old one edited
        assert str(replaced.runtime.powerState) == "poweredOn"
        pvscsi = "ParaVirtualSCSIController"
        assert layout_of(replaced) == {key: (cap, bus.bus, 0, pvscsi) for key, cap, bus in DISKS}
        for key, copy in copies.items():
            assert filecmp.cmp(copy, flat_file(vcsim, replaced, key), shallow=False)
        progress = api.get(f"/api/v1/jobs/{job['id']}/restore-progress").json()
        assert progress["replaced"] is True
        assert progress["powered_on"] is True
    finally:
        drop_vm(si, name)
    assert pids_with(str(tmp_path)) == []


def test_a_failed_restore_removes_the_vm_it_made(
    node: TestClient, hub: Hub, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    hub.repos.add(str(repo_dir))
    source = create_vm(si, unique("fails"), DISKS, cbt=True)
    point = backup(hub, node, vcsim, source)
    with hub.db.session() as s:
        recorded = s.get_one(RestorePoint, point).layout
    name = unique("half")
    body = {
        "vcenter_host": vcsim.host,
        "vcenter_user": vcsim.username,
        "vcenter_password": vcsim.password,
        "vcenter_thumbprint": vcsim.thumbprint,
        "job_id": unique("job"),
        "vm_name": name,
        "layout": recorded,
        # Nothing listens there: the VM is made, its disks cannot be read.
        "nbd_targets": "2000:nbd://127.0.0.1:1/none,2016:nbd://127.0.0.1:1/none",
    }
    started = node.post("/api/v1/restore/start", json=body)
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 30
    while (status := node.get(f"/api/v1/restore/jobs/{body['job_id']}").json())["state"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status["state"] == "failed"
    assert "127.0.0.1:1" in status["error"]
    assert status["vm_path"] == f"DC0/vm/{name}"  # it was made...
    assert find_vm(si, name) is None  # ...and removed
    assert vcsim.password not in str(status)
    # It held the node's backups back while it copied, and no longer does.
    priority = node.app.state.node.runner.limits.priority  # type: ignore[attr-defined]
    assert (priority.restored, priority.restores, priority.waiting) == (1, 0, 0)
