"""Backups running at once on one repository are checked together: each full's
estimate is promised to it until its file holds it, and the next backup gets only
the free space left after those promises (HTTP 507 before any file, its rows
gone). The node's exact plan replaces the estimate. On SQLite and PostgreSQL, on a
64 MiB tmpfs whose free space the test controls; the repository list shows it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sendense.common.errors import InsufficientSpace
from sendense.hub.backup.disks import DiskSpec
from sendense.hub.db.models import Job, JobState, RestorePoint, RestorePointDisk
from sendense.hub.service import Hub

MiB = 1 << 20


@pytest.fixture
def small_repo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def reserved(hub: Hub, job_id: str) -> list[int | None]:
    with hub.db.session() as s:
        return list(
            s.scalars(
                select(RestorePointDisk.reserved_bytes)
                .join(RestorePoint)
                .where(RestorePoint.job_id == job_id)
            )
        )


def test_a_full_promised_to_a_running_backup_is_not_handed_out_again(
    db_hub: Hub, small_repo: Path
) -> None:
    hub = db_hub
    repo = hub.repos.add(str(small_repo))
    first = hub.ledger.prepare("first", [DiskSpec(2000, 64 * MiB, estimated_bytes=48 * MiB)])
    assert reserved(hub, first.job_id) == [48 * MiB]
    promised = hub.repos.promised(repo)
    assert 47 * MiB < promised <= 48 * MiB  # less the header its file already takes
    # Alone it would fit (64 MiB free); beside the first it does not.
    with pytest.raises(InsufficientSpace) as refused:
        hub.ledger.prepare("second", [DiskSpec(2000, 64 * MiB, estimated_bytes=24 * MiB)])
    assert refused.value.http_status == 507
    assert f"{promised} of them promised to backups running on it" in refused.value.message
    with hub.db.session() as s:
        second = s.scalars(select(Job).where(Job.id != first.job_id)).one()
        assert (second.state, second.error) == (JobState.FAILED, refused.value.message)
        assert s.scalars(select(RestorePoint).where(RestorePoint.job_id == second.id)).all() == []
    # The first job's own room does not count its own promise.
    assert hub.ledger.room(first) > 60 * MiB

    # The node's plan says 8 MiB: that is all it keeps promised.
    hub.ledger.planned(first, {2000: 8 * MiB})
    assert reserved(hub, first.job_id) == [8 * MiB]
    third = hub.ledger.prepare("third", [DiskSpec(2000, 64 * MiB, estimated_bytes=24 * MiB)])
    assert hub.ledger.room(third) < 56 * MiB  # the first's 8 MiB are held back from it

    # A backup that ended promises nothing.
    hub.ledger.fail(first.job_id, "test: ended")
    hub.ledger.fail(third.job_id, "test: ended")
    assert hub.repos.promised(repo) == 0


def test_the_repository_list_shows_what_running_backups_may_still_write(
    hub: Hub, api: TestClient, repo_dir: Path
) -> None:
    hub.repos.add(str(repo_dir))
    before = api.get("/api/v1/repositories").json()
    assert [r["promised_bytes"] for r in before] == [0]
    running = hub.ledger.prepare("big", [DiskSpec(2000, 64 * MiB, estimated_bytes=48 * MiB)])
    [listed] = api.get("/api/v1/repositories").json()
    assert 47 * MiB < listed["promised_bytes"] <= 48 * MiB
    hub.ledger.fail(running.job_id, "test: ended")
    assert [r["promised_bytes"] for r in api.get("/api/v1/repositories").json()] == [0]
