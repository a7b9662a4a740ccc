"""A hub upgraded from the previous schema serves what it had: a database made at
revision 0006 with a real QCOW2 chain, a prune's and a verification's records
and an instant access, migrated to head by `Hub.open`, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import text

from sendense.common.tokens import new_token, token_digest
from sendense.hub.api.app import create_app
from sendense.hub.db.database import Database
from sendense.hub.db.models import TaskKind
from sendense.hub.service import Hub
from tests.conftest import make_settings
from tests.rig.tasks import wait_task

MiB = 1 << 20
SIZE = 8 * MiB
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True
    )


def make_chain(repo: Path) -> tuple[str, str]:
    """A full and an incremental of one disk, as wave 1 wrote them."""
    directory = repo / "vm1" / "2000"
    directory.mkdir(parents=True)
    full, inc = directory / "full.qcow2", directory / "inc.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(full), str(SIZE)], check=True)
    qemu_io(full, f"write -P 0x11 0 {SIZE}")
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "full.qcow2",
            str(inc),
            str(SIZE),
        ],
        check=True,
    )
    qemu_io(inc, f"write -P 0x22 {MiB} {MiB}")
    return "vm1/2000/full.qcow2", "vm1/2000/inc.qcow2"


def old_rows(url: str, repo: Path, files: tuple[str, str]) -> None:
    """The rows revision 0006 held: backup jobs, a prune and a verification that
    stored their kind in `backup_type` too, an access, two points, a merge."""
    db = Database(url)
    db.migrate("0006")
    rows: dict[str, list[dict[str, object]]] = {
        "repositories": [{"id": "r1", "name": "main", "path": str(repo), "created_at": T0}],
        "vms": [{"id": "vm1", "name": "pgtest1", "created_at": T0}],
        "jobs": [
            {"id": "j1", "vm_id": "vm1", "kind": "backup", "backup_type": "full"},
            {"id": "j2", "vm_id": "vm1", "kind": "backup", "backup_type": "auto"},
            {"id": "j3", "vm_id": "vm1", "kind": "prune", "backup_type": "prune"},
            {"id": "j4", "vm_id": "vm1", "kind": "verify", "backup_type": "verify"},
            {"id": "j5", "vm_id": "vm1", "kind": "access", "backup_type": "instant"},
            {"id": "j6", "vm_id": "vm1", "kind": "restore", "backup_type": "restore"},
        ],
        "restore_points": [
            {
                "id": "p1",
                "vm_id": "vm1",
                "job_id": "j1",
                "repository_id": "r1",
                "status": "complete",
                "created_at": T0,
                "completed_at": T0,
                "protected": False,
            },
            {
                "id": "p2",
                "vm_id": "vm1",
                "job_id": "j2",
                "repository_id": "r1",
                "status": "complete",
                "created_at": T0 + timedelta(days=1),
                "completed_at": T0 + timedelta(days=1),
                "protected": True,
            },
        ],
        "restore_point_disks": [
            {
                "id": "d1",
                "restore_point_id": "p1",
                "disk_key": 2000,
                "parent_id": None,
                "file_path": files[0],
                "backup_type": "full",
                "virtual_size": SIZE,
                "status": "complete",
                "checksum": "x",
                "verified_at": T0,
            },
            {
                "id": "d2",
                "restore_point_id": "p2",
                "disk_key": 2000,
                "parent_id": "d1",
                "file_path": files[1],
                "backup_type": "incremental",
                "virtual_size": SIZE,
                "status": "complete",
                "checksum": "y",
                "verified_at": None,
            },
        ],
        "merges": [
            {
                "id": "m1",
                "job_id": "j3",
                "doomed_id": "gone",
                "child_id": None,
                "new_parent_id": None,
                "state": "done",
                "created_at": T0,
            },
        ],
    }
    with db.engine.begin() as conn:
        for table, values in rows.items():
            for row in values:
                row = {"state": "complete", "created_at": T0, **row} if table == "jobs" else row
                names = ", ".join(row)
                marks = ", ".join(f":{k}" for k in row)
                conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({marks})"), row)
    db.dispose()


def test_a_hub_from_the_previous_revision_upgrades_and_serves_its_points(
    tmp_path: Path, database_url: str, repo_dir: Path
) -> None:
    files = make_chain(repo_dir)
    (repo_dir / ".sendense-repository").write_text("r1\n")
    old_rows(database_url, repo_dir, files)
    hub = Hub.open(make_settings(tmp_path, database_url))  # migrates to head
    try:
        with TestClient(create_app(hub)) as client:
            client.headers["Authorization"] = f"Bearer {hub.tokens.create('t')}"
            jobs = {j["id"]: j for j in client.get("/api/v1/jobs").json()}
            assert {i: (j["kind"], j["backup_type"]) for i, j in jobs.items()} == {
                "j1": ("backup", "full"),
                "j2": ("backup", "auto"),
                "j3": ("prune", None),
                "j4": ("verify", None),
                "j5": ("access", None),
                "j6": ("restore", None),
            }
            with hub.db.engine.connect() as conn:
                purpose = conn.execute(text("SELECT purpose FROM jobs WHERE id = 'j5'")).scalar()
            assert purpose == "instant"
            points = client.get("/api/v1/restore-points", params={"vm": "pgtest1"}).json()
            assert [p["id"] for p in points] == ["p1", "p2"]
            assert points[1]["protected"] is True
            assert points[1]["disks"][0]["parent_id"] == "d1"
            assert points[1]["disks"][0]["full_reason"] is None  # 0009: nothing known
            raw = client.get("/api/v1/restore-points/p2/disks/2000/download")
            assert raw.status_code == 200
            expected = bytearray(b"\x11" * SIZE)
            expected[MiB : 2 * MiB] = b"\x22" * MiB
            assert raw.content == bytes(expected)
            verify = client.post("/api/v1/verify", json={"target": "p2"})
            assert verify.status_code == 202
            task = verify.json()["job_id"]
            state = wait_task(client, task)
            assert state["state"] == "complete", state
            assert state["kind"] == TaskKind.VERIFY.value
    finally:
        hub.reconcile("test ended")
        hub.close()


def test_tokens_from_before_0012_keep_working_as_admin(tmp_path: Path, database_url: str) -> None:
    """A token made at revision 0011 becomes an admin token: it lists and makes
    tokens, and its calls are audited."""
    secret = new_token("sdh_")
    db = Database(database_url)
    db.migrate("0011")
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_tokens (id, name, token_hash, created_at) "
                "VALUES ('t1', 'old', :digest, :at)"
            ),
            {"digest": token_digest(secret), "at": T0},
        )
    db.dispose()
    hub = Hub.open(make_settings(tmp_path, database_url))  # migrates to head
    try:
        with TestClient(create_app(hub), headers={"Authorization": f"Bearer {secret}"}) as client:
            listed = client.get("/api/v1/tokens")
            assert listed.status_code == 200
            assert [(t["id"], t["role"], t["active"]) for t in listed.json()] == [
                ("t1", "admin", True)
            ]
            made = client.post("/api/v1/tokens", json={"name": "new", "role": "viewer"})
            assert made.status_code == 201
            assert [e["actor"] for e in client.get("/api/v1/audit").json()] == ["old"]
    finally:
        hub.close()
