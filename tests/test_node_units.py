"""Node pieces that need no vCenter: the contract, area arithmetic, readers' paths, tokens."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from sendense.common.checksum import BlockHasher, block_digest
from sendense.common.config import load_settings
from sendense.common.contract import BackupStartRequest, NodeJobStatus
from sendense.common.errors import InvalidInput, Unauthorized
from sendense.node import task_table
from sendense.node.api.app import create_node_app
from sendense.node.auth import NodeTokens
from sendense.node.backup_tasks import BackupTasks, NodeJob
from sendense.node.config import NodeSettings
from sendense.node.engine import chunks, gaps
from sendense.node.vmware.changes import _append
from sendense.node.vmware.readers import flat_file

SEED = {
    "job_id": "job1",
    "vm_name": "pgtest1",
    "vcenter_host": "vcenter.example.com",
    "vcenter_user": "user@vsphere.local",
    "vcenter_password": "password",
    "nbd_targets": "2000:nbd://127.0.0.1:10100/pgtest1-disk0,2001:nbd://127.0.0.1:10101/pgtest1-disk1",
}


def test_seed_body_parses_and_the_password_stays_secret() -> None:
    req = BackupStartRequest.model_validate(SEED)
    assert req.backup_type == "full"
    assert req.vcenter_password.get_secret_value() == "password"
    assert "password'" not in repr(req)
    assert "password" not in req.model_dump_json().replace("vcenter_password", "")


@pytest.mark.parametrize(
    "change",
    [
        {"nbd_targets": "2000:nbd://127.0.0.1/x"},
        {"nbd_targets": ""},
        {"backup_type": "differential"},
        {"job_id": "../x"},
        {"previous_change_ids": {"disk0": "x"}},
    ],
)
def test_bad_requests_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BackupStartRequest.model_validate({**SEED, **change})


def test_chunks_and_gaps_cover_the_disk() -> None:
    areas = [(0, 10), (20, 5), (40, 30)]
    assert list(chunks(areas, 8)) == [(0, 8), (8, 2), (20, 5), (40, 8), (48, 8), (56, 8), (64, 6)]
    assert list(gaps(areas, 100)) == [(10, 10), (25, 15), (70, 30)]
    assert list(gaps([], 5)) == [(0, 5)]
    assert list(gaps([(0, 5)], 5)) == []


def test_adjacent_changed_areas_merge() -> None:
    areas: list[tuple[int, int]] = []
    for start, length in [(0, 4), (4, 4), (10, 2), (11, 5)]:
        _append(areas, start, length)
    assert areas == [(0, 8), (10, 6)]


def test_datastore_paths_map_to_the_flat_extent() -> None:
    assert flat_file("[LocalDS_0] pgtest1/pgtest1.vmdk") == (
        "LocalDS_0",
        "pgtest1/pgtest1-flat.vmdk",
    )
    assert flat_file("[ds 1] a/b-flat.vmdk") == ("ds 1", "a/b-flat.vmdk")
    for bad in ("no brackets.vmdk", "[ds] ../../etc/passwd"):
        with pytest.raises(InvalidInput):
            flat_file(bad)


def test_checksum_is_order_independent_and_zero_blocks_are_cheap() -> None:
    zero = bytes(8)
    a, b = BlockHasher(), BlockHasher()
    blocks = [(0, b"abcdefgh"), (8, zero), (16, b"12345678")]
    for offset, data in blocks:
        a.add(offset, len(data), block_digest(data, zero))
    for offset, data in reversed(blocks):
        b.add(offset, len(data), block_digest(data, zero))
    assert a.hexdigest() == b.hexdigest()
    assert a.hexdigest().startswith("blake3-blocks:")
    assert block_digest(zero, zero) == block_digest(bytes(8))


def test_node_tokens(tmp_path: Path) -> None:
    tokens = NodeTokens(tmp_path)
    first = tokens.create("hub")
    second = tokens.create("ops")
    assert tokens.verify(first) == "hub"
    assert tokens.verify(second) == "ops"
    assert first not in (tmp_path / "api-tokens").read_text()
    with pytest.raises(Unauthorized):
        tokens.verify("sdn_wrong")
    with pytest.raises(Unauthorized):
        tokens.verify(None)


def test_node_api_auth_and_validation(tmp_path: Path) -> None:
    settings = load_settings(NodeSettings, data_dir=tmp_path)
    token = NodeTokens(tmp_path).create("hub")
    app = create_node_app(settings)
    with TestClient(app) as anonymous:
        assert anonymous.get("/api/v1/health").json()["status"] == "ok"
        assert anonymous.post("/api/v1/backup/start", json=SEED).status_code == 401
        assert anonymous.get("/api/v1/jobs/x").status_code == 401
        assert "/api/v1/backup/start" in anonymous.get("/openapi.json").json()["paths"]
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        bad = client.post("/api/v1/backup/start", json={**SEED, "nbd_targets": "garbage"})
        assert bad.status_code == 422
        assert bad.json()["error"] == "invalid_input"
        assert "garbage" in bad.json()["message"]
        assert "password" not in bad.text.replace("vcenter_password", "")
        assert client.get("/api/v1/jobs/nope").status_code == 404


def test_the_job_table_forgets_finished_jobs_beyond_a_week_or_its_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Months of nightly jobs: running ones stay, finished ones of the last week
    stay up to KEEP_FINISHED, the oldest go first."""
    monkeypatch.setattr(task_table, "KEEP_FINISHED", 5)
    table: task_table.TaskTable[NodeJob] = task_table.TaskTable()
    now = time.time()

    def job(job_id: str, state: str, finished_ago: float | None) -> None:
        finished = None if finished_ago is None else now - finished_ago
        status = NodeJobStatus(
            job_id=job_id, vm_name="vm", state=state, started_at=now - 9e6, finished_at=finished
        )
        table.add(job_id, NodeJob(status))

    job("running-long", "running", None)
    job("last-month", "complete", 30 * 86400)
    job("eight-days", "failed", 8 * 86400)
    for day in range(6, 0, -1):
        job(f"day-{day}", "complete", day * 86400)
    job("queued", "queued", None)
    job("just-now", "cancelled", 1)
    assert set(table.jobs) == {
        "running-long",
        "queued",
        "day-4",
        "day-3",
        "day-2",
        "day-1",
        "just-now",
    }
    assert table.get("just-now").status.state == "cancelled"

    async def ends() -> None:  # a job that finishes through the table's run
        await table.run(table.get("queued"), asyncio.sleep(0))

    asyncio.run(ends())
    assert table.get("queued").status.state == "complete"
    for n in range(4):  # jobs finishing later push out the oldest four
        job(f"later-{n}", "complete", 0)
    later = {f"later-{n}" for n in range(4)}
    assert set(table.jobs) == {"running-long", "queued"} | later
    job("last", "complete", 0)  # the job run finished is the oldest now
    assert set(table.jobs) == {"running-long", "last"} | later


def test_backups_read_at_20_mb_s_during_a_restore_unless_set_otherwise(tmp_path: Path) -> None:
    """The measured default (docs/decisions.md); 0 leaves only the reads' count;
    a negative rate is refused with the setting's name."""
    default = BackupTasks(load_settings(NodeSettings, data_dir=tmp_path / "a"))
    assert default.limits.priority.rate.rate == 20e6
    assert default.limits.priority.backup_reads == 2
    off = BackupTasks(
        load_settings(NodeSettings, data_dir=tmp_path / "b", backup_mb_s_during_restore=0)
    )
    assert off.limits.priority.rate.rate is None
    with pytest.raises(InvalidInput, match="backup_mb_s_during_restore"):
        load_settings(NodeSettings, data_dir=tmp_path / "c", backup_mb_s_during_restore=-1)
