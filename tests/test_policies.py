"""Policies, prune through the API, protected/newest/in-use points, and schedules
under an injected clock."""

from __future__ import annotations

import json
import random
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from sendense.hub.api.queries import Queries
from sendense.hub.backup.scheduler import Scheduler
from sendense.hub.db.models import RestorePoint, Vm
from sendense.hub.retention.policies import PolicyService
from sendense.hub.retention.rules import KeepRules
from sendense.hub.service import Hub
from tests.rig.chains import hub_backup, same_as

SIZE = 1 << 20
START = datetime(2026, 1, 1, 12, tzinfo=UTC)


def make_points(hub: Hub, tmp_path: Path, days: int) -> tuple[list[str], dict[str, bytes]]:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    hub.repos.add(str(repo))
    rng = random.Random(days)
    disk = bytearray(rng.randbytes(SIZE))
    points, sources = [], {}
    for n in range(days):
        offset = rng.randrange(16) * 65536
        disk[offset : offset + 65536] = rng.randbytes(65536)
        point = hub_backup(
            hub, "vm1", {2000: bytes(disk)}, {2000: [(offset, 65536)]}, START + timedelta(days=n)
        )
        points.append(point)
        sources[point] = bytes(disk)
    return points, sources


def point_ids(hub: Hub) -> set[str]:
    with hub.db.session() as s:
        return set(s.scalars(select(RestorePoint.id)))


def test_bad_policies_are_refused_and_nothing_is_pruned(
    api: TestClient, hub: Hub, tmp_path: Path
) -> None:
    points, _ = make_points(hub, tmp_path, 3)
    bad = api.post("/api/v1/policies", json={"name": "p", "schedule": "61 * * * *"})
    assert bad.status_code == 422
    assert bad.json()["error"] == "invalid_input"
    assert "cron" in bad.json()["message"]
    negative = api.post("/api/v1/policies", json={"name": "p", "keep_daily": -1})
    assert negative.status_code == 422
    assert negative.json()["error"] == "invalid_input"
    assert api.post("/api/v1/policies", json={"name": "p", "keep_last": 1}).status_code == 201
    unknown = api.post("/api/v1/policies/p/assignments", json={"kind": "vm", "value": "nope"})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    assert "nope" in unknown.json()["message"]
    no_policy = api.post("/api/v1/prune", json={"vm": "vm1"})
    assert no_policy.status_code == 409
    assert no_policy.json()["error"] == "conflict"
    assert "policy" in no_policy.json()["message"]
    assert point_ids(hub) == set(points)


def test_dry_run_then_prune_keeps_protected_newest_and_accessed_points(
    api: TestClient, hub: Hub, tmp_path: Path
) -> None:
    points, sources = make_points(hub, tmp_path, 6)
    assert api.post("/api/v1/policies", json={"name": "p", "keep_last": 1}).status_code == 201
    assigned = api.post("/api/v1/policies/p/assignments", json={"kind": "vm", "value": "vm1"})
    assert assigned.status_code == 200, assigned.text
    assert api.post(f"/api/v1/restore-points/{points[1]}/protect", json={}).status_code == 200
    access = hub.access.open(points[3])
    try:
        plan = api.post("/api/v1/prune", json={"vm": "vm1", "dry_run": True})
        assert plan.status_code == 200, plan.text
        reasons = {d["restore_point_id"]: d["reason"] for d in plan.json()["decisions"]}
        assert reasons == {
            points[5]: "keep-last",
            points[4]: "remove",
            points[3]: "in use",
            points[2]: "in use",
            points[1]: "protected",
            points[0]: "in use",
        }
        assert point_ids(hub) == set(points)  # a dry run removes nothing
        done = api.post("/api/v1/prune", json={"vm": "vm1"})
        assert done.status_code == 200, done.text
        assert done.json()["removed"] == [points[4]]
        task = api.get(f"/api/v1/tasks/{done.json()['job_id']}").json()
        assert task["kind"] == "prune"
        assert task["started_by"].startswith("token:")
    finally:
        hub.access.close(access.id)
    done = api.post("/api/v1/prune", json={"vm": "vm1"})
    assert sorted(done.json()["removed"]) == sorted([points[0], points[2], points[3]])
    assert point_ids(hub) == {points[1], points[5]}
    for point_id in point_ids(hub):
        disk = Queries(hub.db).restore_point(point_id).disks[0]
        assert same_as(tmp_path / "repo" / disk.file_path, sources[point_id], tmp_path)
    files = {
        p.relative_to(tmp_path / "repo").as_posix() for p in (tmp_path / "repo").rglob("*.qcow2")
    }
    assert files == {Queries(hub.db).restore_point(p).disks[0].file_path for p in point_ids(hub)}


def test_a_missed_schedule_runs_once_not_once_per_slot(hub: Hub) -> None:
    clock = [datetime(2026, 5, 1, 10, 0, 30, tzinfo=UTC)]
    policies = PolicyService(hub.db)
    policies.create("every2", KeepRules(last=1), None, "*/2 * * * *")
    scheduler = Scheduler(
        hub.backups,
        policies,
        hub.prune,
        hub.connector,
        node_status=hub.node_status,
        zone=hub.settings.zone,
        node_timeout=hub.settings.node_timeout_s,
        clock=lambda: clock[0],
    )
    policies.mark_run("every2", clock[0])
    assert scheduler.tick() == []  # next slot 10:02
    clock[0] += timedelta(minutes=1, seconds=40)  # 10:02:10
    assert scheduler.tick() == ["every2"]
    scheduler.wait_idle()
    assert scheduler.tick() == []
    clock[0] += timedelta(minutes=10)  # the hub was down over five slots
    assert scheduler.tick() == ["every2"]
    scheduler.wait_idle()
    assert scheduler.tick() == []
    shown = scheduler.schedules()[0]
    assert shown.last_run_at == clock[0]
    assert shown.next_run_at == datetime(2026, 5, 1, 10, 14, tzinfo=UTC)


def test_policies_and_schedules_are_listed(api: TestClient) -> None:
    created = api.post(
        "/api/v1/policies", json={"name": "q", "keep_daily": 7, "schedule": "0 3 * * *"}
    )
    assert created.status_code == 201
    listed = api.get("/api/v1/policies").json()
    assert listed[0]["keep"]["daily"] == 7
    assert listed[0]["schedule"] == "0 3 * * *"
    shown = api.get("/api/v1/schedules").json()
    assert shown[0]["policy"] == "q"
    assert shown[0]["next_run_at"].endswith("03:00:00Z")


def test_repository_list_shows_what_prune_would_free(
    api: TestClient, hub: Hub, tmp_path: Path
) -> None:
    points, _ = make_points(hub, tmp_path, 4)
    api.post("/api/v1/policies", json={"name": "p", "keep_last": 2})
    api.post("/api/v1/policies/p/assignments", json={"kind": "vm", "value": "vm1"})
    before = api.get("/api/v1/repositories").json()[0]
    sizes = {
        p: sum(d.file_size or 0 for d in Queries(hub.db).restore_point(p).disks) for p in points
    }
    assert before["backup_bytes"] == sum(sizes.values())
    assert before["prunable_bytes"] == sizes[points[0]] + sizes[points[1]]
    assert api.post("/api/v1/prune", json={"vm": "vm1"}).status_code == 200
    after = api.get("/api/v1/repositories").json()[0]
    assert after["prunable_bytes"] == 0
    assert after["backup_bytes"] < before["backup_bytes"]


def test_a_vm_takes_its_own_policy_else_the_longest_folder_else_a_pattern(hub: Hub) -> None:
    policies = PolicyService(hub.db)
    for name in ("own", "prod", "prod-db", "web"):
        policies.create(name, KeepRules(last=1), None, None)
    with hub.db.session() as s:
        s.add(Vm(name="db-7"))
    policies.assign("own", "vm", "db-7")
    policies.assign("prod", "folder", "DC0/vm/prod")
    policies.assign("prod-db", "folder", "DC0/vm/prod/db/")
    policies.assign("web", "pattern", "web-*")

    def chosen(vm: str, folder: str | None) -> str | None:
        policy = policies.policy_for(vm, folder)
        return policy.name if policy else None

    assert chosen("db-7", "DC0/vm/prod/db") == "own"
    assert chosen("db-8", "DC0/vm/prod/db") == "prod-db"
    assert chosen("web-1", "DC0/vm/prod") == "prod"
    assert chosen("web-1", "DC0/vm/production") == "web"  # a folder matches whole names
    assert chosen("mail", None) is None


def test_a_layer_that_fails_verification_is_not_merged(
    api: TestClient, hub: Hub, tmp_path: Path
) -> None:
    points, sources = make_points(hub, tmp_path, 3)
    api.post("/api/v1/policies", json={"name": "p", "keep_last": 1})
    middle = Queries(hub.db).restore_point(points[1]).disks[0]
    image = tmp_path / "repo" / middle.file_path
    mapped = subprocess.run(
        ["qemu-img", "map", "--output=json", str(image)], check=True, capture_output=True, text=True
    )
    extents = json.loads(mapped.stdout)
    with image.open("r+b") as handle:  # one byte of the middle layer's own data
        offset = next(e["offset"] for e in extents if e["data"] and e["depth"] == 0) + 100
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 1]))
    refused = api.post("/api/v1/prune", json={"vm": "vm1", "policy": "p"})
    assert refused.status_code == 409
    assert refused.json()["error"] == "conflict"
    assert "merged" in refused.json()["message"]
    assert point_ids(hub) == set(points)  # nothing removed
    assert (
        same_as(
            tmp_path / "repo" / Queries(hub.db).restore_point(points[2]).disks[0].file_path,
            sources[points[2]],
            tmp_path,
        )
        is False
    )  # the flipped byte shows through
