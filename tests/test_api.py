"""The hub API on 8082: auth, errors as JSON with a message, and the write exports."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sendense.common.errors import WrongTaskKind
from sendense.hub.api.app import create_app
from sendense.hub.backup.disks import DiskSpec
from sendense.hub.db.models import Job, JobState, TaskKind, Vm, utcnow
from sendense.hub.service import Hub
from tests.rig.procs import pids_with

DISKS = [{"key": 2000, "capacity_bytes": 1 << 30}, {"key": 2001, "capacity_bytes": 1 << 29}]


def test_health_needs_no_token_and_the_openapi_document_is_served(hub: Hub) -> None:
    with TestClient(create_app(hub)) as client:
        body = client.get("/api/v1/health").json()
        assert body["status"] == "ok"
        assert body["database"] == "ok"
        # No page that loads scripts from a CDN (FastAPI's Swagger UI and ReDoc).
        assert client.get("/docs").status_code == 404
        assert client.get("/redoc").status_code == 404
        assert "/api/v1/repositories" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc"])
def test_missing_or_wrong_token_is_401_with_a_message(hub: Hub, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    with TestClient(create_app(hub), headers=headers) as client:
        for path in ("/api/v1/repositories", "/api/v1/ports", "/api/v1/jobs", "/api/v1/vms"):
            response = client.get(path)
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"
            assert response.json()["message"]


def test_repositories_add_list_capacity(api: TestClient, repo_dir: Path, tmp_path: Path) -> None:
    created = api.post("/api/v1/repositories", json={"path": str(repo_dir), "name": "r1"})
    assert created.status_code == 201
    assert created.json()["capacity"]["total"] > 0
    assert [r["name"] for r in api.get("/api/v1/repositories").json()] == ["r1"]
    assert api.get("/api/v1/repositories/r1/capacity").json()["free"] > 0
    bad = api.post("/api/v1/repositories", json={"path": str(tmp_path / "missing")})
    assert bad.status_code == 422
    assert bad.json()["error"] == "invalid_input"
    assert str(tmp_path / "missing") in bad.json()["message"]
    duplicate = api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    assert duplicate.status_code == 409
    assert duplicate.json()["error"] == "conflict"
    assert api.get("/api/v1/repositories/nope/capacity").status_code == 404


def test_unwritable_repository_is_422(api: TestClient, readonly_dir: Path) -> None:
    response = api.post("/api/v1/repositories", json={"path": str(readonly_dir)})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"
    assert str(readonly_dir) in response.json()["message"]


@pytest.mark.parametrize("name", ["../../etc", "a/../../b", "..", "x/y"])
def test_path_like_vm_names_are_refused_and_nothing_is_written(
    api: TestClient, repo_dir: Path, tmp_path: Path, name: str
) -> None:
    api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    before = sorted(tmp_path.parent.rglob("*"))
    response = api.post("/api/v1/jobs", json={"vm_name": name, "disks": DISKS})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"
    assert [p.name for p in repo_dir.iterdir()] == [".sendense-repository"]
    assert sorted(tmp_path.parent.rglob("*")) == before
    assert api.get("/api/v1/jobs").json() == []


def test_job_opens_exports_and_a_second_job_for_the_vm_is_409(
    api: TestClient, repo_dir: Path
) -> None:
    api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    created = api.post("/api/v1/jobs", json={"vm_name": "my vm", "disks": DISKS})
    assert created.status_code == 201, created.text
    job = created.json()
    assert [t["disk_key"] for t in job["targets"]] == [2000, 2001]
    assert job["targets"][0]["export_name"].startswith("my-vm-")
    assert len(api.get("/api/v1/exports").json()) == 2
    assert all(e["alive"] for e in api.get("/api/v1/exports").json())
    again = api.post("/api/v1/jobs", json={"vm_name": "my vm", "disks": DISKS})
    assert again.status_code == 409
    assert again.json()["error"] == "vm_busy"
    assert job["job_id"] in again.json()["message"]
    vm = api.get("/api/v1/vms/my vm").json()
    assert [d["disk_key"] for d in vm["disks"]] == [2000, 2001]
    assert vm["active_job_id"] == job["job_id"]

    failed = api.post(
        f"/api/v1/jobs/{job['job_id']}/finish", json={"success": False, "error": "node went away"}
    )
    assert failed.json()["state"] == "failed"
    assert failed.json()["error"] == "node went away"
    assert api.get("/api/v1/exports").json() == []
    assert api.get("/api/v1/ports").json()["used"] == 0
    assert api.get("/api/v1/restore-points").json() == []
    assert list(repo_dir.rglob("*.qcow2")) == []
    assert pids_with(str(repo_dir)) == []


def test_full_pool_gives_503_with_a_message(hub: Hub, api: TestClient, repo_dir: Path) -> None:
    api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    pool = hub.ports.last - hub.ports.first + 1
    for i in range(pool):
        hub.ports.allocate(f"filler-{i}")
    response = api.post("/api/v1/jobs", json={"vm_name": "pgtest1", "disks": DISKS})
    assert response.status_code == 503
    assert response.json()["error"] == "pool_exhausted"
    assert api.get("/api/v1/exports").json() == []
    assert list(repo_dir.rglob("*.qcow2")) == []
    assert api.get("/api/v1/jobs").json()[0]["state"] == "failed"
    assert api.get("/api/v1/ports").json()["used"] == pool


def test_job_without_a_repository_is_a_clear_404(api: TestClient) -> None:
    response = api.post("/api/v1/jobs", json={"vm_name": "pgtest1", "disks": DISKS})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_malformed_bodies_are_422(api: TestClient) -> None:
    for body in (
        {},
        {"vm_name": "x", "disks": []},
        {"vm_name": "x", "disks": [{"key": -1, "capacity_bytes": 1}]},
        {"vm_name": "x", "disks": DISKS, "backup_type": "weird"},
    ):
        response = api.post("/api/v1/jobs", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"] == "invalid_input", body
        assert response.json()["message"]


def test_finish_without_a_result_for_every_disk_fails_the_job(
    api: TestClient, repo_dir: Path
) -> None:
    api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    job = api.post("/api/v1/jobs", json={"vm_name": "half", "disks": DISKS}).json()
    answer = api.post(
        f"/api/v1/jobs/{job['job_id']}/finish",
        json={"success": True, "disks": {"2000": {"change_id": "x"}}},
    )
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_input"
    state = api.get(f"/api/v1/jobs/{job['job_id']}").json()
    assert state["state"] == "failed"
    assert api.get("/api/v1/restore-points").json() == []
    assert api.get("/api/v1/vms/half").json()["active_job_id"] is None
    assert list(repo_dir.rglob("*.qcow2")) == []


def test_finish_with_areas_past_the_disk_s_end_fails_the_job(
    api: TestClient, repo_dir: Path
) -> None:
    api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    job = api.post("/api/v1/jobs", json={"vm_name": "past", "disks": DISKS}).json()
    done = {
        str(d["key"]): {"change_id": "c", "areas": [[0, 4096]], "checksum_block": 4096}
        for d in DISKS
    }
    done[str(DISKS[0]["key"])]["areas"] = [[0, 4096], [2**40, 4096]]
    answer = api.post(f"/api/v1/jobs/{job['job_id']}/finish", json={"success": True, "disks": done})
    assert answer.status_code == 422, answer.text
    assert "outside the disk" in answer.json()["message"]
    assert api.get(f"/api/v1/jobs/{job['job_id']}").json()["state"] == "failed"
    assert api.get("/api/v1/restore-points").json() == []


def test_an_unmounted_repository_is_refused_not_filled(api: TestClient, repo_dir: Path) -> None:
    api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    (repo_dir / ".sendense-repository").unlink()  # what an empty mountpoint looks like
    answer = api.post("/api/v1/jobs", json={"vm_name": "nfs", "disks": DISKS})
    assert answer.status_code == 503
    assert answer.json()["error"] == "unavailable"
    assert list(repo_dir.rglob("*.qcow2")) == []


def test_an_incremental_never_takes_a_parent_from_another_repository(
    hub: Hub, api: TestClient, repo_dir: Path, tmp_path: Path
) -> None:
    second = tmp_path / "second"
    second.mkdir()
    api.post("/api/v1/repositories", json={"path": str(repo_dir), "name": "a"})
    api.post("/api/v1/repositories", json={"path": str(second), "name": "b"})
    first = api.post("/api/v1/jobs", json={"vm_name": "two", "disks": DISKS}).json()
    done = {str(k["key"]): {"change_id": "c"} for k in DISKS}
    assert (
        api.post(
            f"/api/v1/jobs/{first['job_id']}/finish", json={"success": True, "disks": done}
        ).json()["state"]
        == "complete"
    )
    other = api.post("/api/v1/jobs", json={"vm_name": "two", "disks": DISKS, "repository": "b"})
    assert other.status_code == 201, other.text
    assert {t["backup_type"] for t in other.json()["targets"]} == {"full"}
    hub.ledger.fail(other.json()["job_id"], "test done")


def test_absurd_disk_sizes_are_422(api: TestClient) -> None:
    answer = api.post(
        "/api/v1/jobs", json={"vm_name": "x", "disks": [{"key": 2000, "capacity_bytes": 10**20}]}
    )
    assert answer.status_code == 422


@pytest.mark.parametrize("kind", [TaskKind.PRUNE, TaskKind.VERIFY, TaskKind.ACCESS])
@pytest.mark.parametrize("success", [False, True])
def test_only_a_backup_can_be_finished_or_failed_through_the_api(
    hub: Hub, api: TestClient, kind: TaskKind, success: bool
) -> None:
    # A running prune (or any task that is not a backup) holding its VM's lock.
    with hub.db.session() as s:
        vm = Vm(name="merging")
        s.add(vm)
        s.flush()
        task = Job(vm_id=vm.id, kind=kind, state=JobState.RUNNING, started_at=utcnow())
        s.add(task)
        s.flush()
        vm.active_job_id = task.id
        task_id = task.id
    answer = api.post(f"/api/v1/jobs/{task_id}/finish", json={"success": success, "disks": {}})
    assert answer.status_code == 409
    assert answer.json()["error"] == WrongTaskKind.code
    assert api.get(f"/api/v1/jobs/{task_id}").json()["state"] == "running"
    assert api.get("/api/v1/vms/merging").json()["active_job_id"] == task_id


def test_a_disk_read_whole_on_its_chain_is_recorded_as_a_full_that_keeps_its_parent(
    hub: Hub, api: TestClient, repo_dir: Path
) -> None:
    api.post("/api/v1/repositories", json={"path": str(repo_dir)})
    first = api.post("/api/v1/jobs", json={"vm_name": "reset", "disks": DISKS}).json()
    done = {str(d["key"]): {"change_id": "c1"} for d in DISKS}
    finished = api.post(
        f"/api/v1/jobs/{first['job_id']}/finish", json={"success": True, "disks": done}
    )
    assert finished.json()["state"] == "complete"
    second = api.post("/api/v1/jobs", json={"vm_name": "reset", "disks": DISKS}).json()
    assert {t["backup_type"] for t in second["targets"]} == {"incremental"}
    # VMware refused disk 2000's change ID: the node read it whole onto the overlay.
    reason = "disk 2000: VMware rejected change ID 'c1'"
    done = {"2000": {"change_id": "c2", "full_reason": reason}, "2001": {"change_id": "c2"}}
    finished = api.post(
        f"/api/v1/jobs/{second['job_id']}/finish", json={"success": True, "disks": done}
    )
    assert finished.json()["state"] == "complete"
    parents = {
        d["disk_key"]: d["id"]
        for d in api.get(f"/api/v1/restore-points/{first['restore_point_id']}").json()["disks"]
    }
    disks = {
        d["disk_key"]: d
        for d in api.get(f"/api/v1/restore-points/{second['restore_point_id']}").json()["disks"]
    }
    assert (disks[2000]["backup_type"], disks[2000]["full_reason"]) == ("full", reason)
    assert (disks[2001]["backup_type"], disks[2001]["full_reason"]) == ("incremental", None)
    assert {k: d["parent_id"] for k, d in disks.items()} == parents
    assert {k: d["chain_position"] for k, d in disks.items()} == {2000: 2, 2001: 2}
    # It still counts in its chain: with at most 2 files per chain, both disks start anew.
    third = hub.ledger.prepare(
        "reset", [DiskSpec(d["key"], d["capacity_bytes"]) for d in DISKS], max_chain=2
    )
    assert {d.key: d.backup_type for d in third.disks} == {2000: "full", 2001: "full"}
    hub.ledger.fail(third.job_id, "test done")
