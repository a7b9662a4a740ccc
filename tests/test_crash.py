"""kill -9 of the hub while two exports run: the restarted hub cleans up after itself,
and only after itself."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sendense.nbd.qemu_img import QemuImg
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd
from tests.rig.hub import HubProcess
from tests.rig.net import free_port
from tests.rig.procs import pids_with, wait_gone

DISKS = [{"key": 2000, "capacity_bytes": 102 << 30}, {"key": 2001, "capacity_bytes": 5 << 30}]


@pytest.fixture
def hub_process(tmp_path: Path, database_url: str) -> Iterator[HubProcess]:
    hub = HubProcess(tmp_path / "data", database_url)
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def unrelated_qemu_nbd(tmp_path: Path) -> Iterator[QemuNbd]:
    other = tmp_path / "other"
    other.mkdir()
    QemuImg().create(other / "unrelated.qcow2", 1 << 20)
    server = QemuNbd(ExportSpec(other / "unrelated.qcow2", free_port(), "unrelated"))
    with server:
        yield server


def test_kill_9_then_restart_cleans_orphans_and_only_them(
    hub_process: HubProcess, unrelated_qemu_nbd: QemuNbd, repo_dir: Path
) -> None:
    hub_process.start()
    token_file = hub_process.data_dir / "initial-api-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = hub_process.initial_token()
    assert token not in hub_process.log.read_text()
    with hub_process.client(token, timeout=5) as client:
        crash_and_restart(hub_process, client, repo_dir)
    assert unrelated_qemu_nbd.healthy()
    hub_process.stop()
    assert pids_with(str(repo_dir)) == []


def crash_and_restart(hub_process: HubProcess, client: httpx.Client, repo_dir: Path) -> None:
    assert client.post("/api/v1/repositories", json={"path": str(repo_dir)}).status_code == 201
    job = client.post("/api/v1/jobs", json={"vm_name": "pgtest1", "disks": DISKS})
    assert job.status_code == 201, job.text
    job_id = job.json()["job_id"]
    orphans = pids_with(str(repo_dir))
    assert len(orphans) == 2
    assert len(list(repo_dir.rglob("*.qcow2"))) == 2

    hub_process.kill9()
    assert wait_gone(orphans, timeout=0.5) == orphans  # the crash left them running

    hub_process.start()
    assert wait_gone(orphans, timeout=10) == []
    assert client.get("/api/v1/ports").json()["used"] == 0
    assert client.get("/api/v1/exports").json() == []
    assert list(repo_dir.rglob("*.qcow2")) == []
    assert client.get("/api/v1/restore-points").json() == []
    state = client.get(f"/api/v1/jobs/{job_id}").json()
    assert state["state"] == "failed"
    assert "restarted" in state["error"]
    # the VM is unlocked: a new job for it starts
    again = client.post("/api/v1/jobs", json={"vm_name": "pgtest1", "disks": DISKS})
    assert again.status_code == 201, again.text
