"""Each repository's usage over time, on each database backend: housekeeping
samples every mounted repository once a day (the day in the hub's time zone),
keeps two years, skips a repository that is not there, and
`GET /repositories/{ref}/usage-history` answers the samples oldest first."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sendense.hub.api.app import create_app
from sendense.hub.auth.roles import Role
from sendense.hub.db.models import (
    Job,
    JobState,
    PointStatus,
    RepositoryUsageSample,
    RestorePoint,
    RestorePointDisk,
    Vm,
)
from sendense.hub.repository.repositories import MARKER, RepositoryInfo, capacity_of
from sendense.hub.repository.usage_history import KEEP_DAYS
from sendense.hub.service import Hub
from tests.conftest import make_settings

# UTC+14: from 10:00 UTC on, its date is a day ahead of UTC's.
ZONE = "Pacific/Kiritimati"


@pytest.fixture
def hub(tmp_path: Path, database_url: str) -> Iterator[Hub]:
    settings = make_settings(tmp_path, database_url).model_copy(update={"time_zone": ZONE})
    hub = Hub.open(settings)
    try:
        yield hub
    finally:
        hub.reconcile("test ended")
        hub.close()


def add_repo(hub: Hub, tmp_path: Path, name: str) -> RepositoryInfo:
    path = tmp_path / name
    path.mkdir()
    return hub.repos.add(str(path), name)


def samples(hub: Hub) -> list[tuple[str, date]]:
    with hub.db.session() as s:
        rows = s.execute(
            select(RepositoryUsageSample.repository_id, RepositoryUsageSample.day).order_by(
                RepositoryUsageSample.day, RepositoryUsageSample.repository_id
            )
        )
        return [(repo_id, day) for repo_id, day in rows]


def test_housekeeping_samples_each_repository_once_a_day(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = add_repo(hub, tmp_path, "repo")
    before = datetime.now(hub.settings.zone).date()
    first = hub.housekeeping()
    after = datetime.now(hub.settings.zone).date()
    again = hub.housekeeping()
    assert (first.usage_samples, again.usage_samples) == (1, 0)
    [(repo_id, day)] = samples(hub)
    assert repo_id == repo.id
    assert day in (before, after)  # the hub's date, not UTC's
    with hub.db.session() as s:
        row = s.scalars(select(RepositoryUsageSample)).one()
        assert row.total_bytes == capacity_of(repo.path).total > 0
        assert 0 < row.used_bytes <= row.total_bytes
        assert 0 < row.free_bytes <= row.total_bytes
        assert row.backup_bytes == 0

    monkeypatch.setattr(hub, "today", lambda: day + timedelta(days=1))
    assert hub.housekeeping().usage_samples == 1
    assert hub.housekeeping().usage_samples == 0
    assert samples(hub) == [(repo.id, day), (repo.id, day + timedelta(days=1))]


def test_a_repository_sampled_twice_at_once_keeps_one_row(hub: Hub, tmp_path: Path) -> None:
    """Two hubs sampling together: the unique (repository, day) keeps the first."""
    repo = add_repo(hub, tmp_path, "repo")
    today = hub.today()
    assert hub.usage_history.sample([repo, repo], today) == 1
    assert samples(hub) == [(repo.id, today)]


def test_a_sample_counts_what_the_backups_take(hub: Hub, tmp_path: Path) -> None:
    repo = add_repo(hub, tmp_path, "repo")
    other = add_repo(hub, tmp_path, "other")
    with hub.db.session() as s:
        vm = Vm(name="vm-usage")
        s.add(vm)
        s.flush()
        job = Job(vm_id=vm.id, state=JobState.COMPLETE)
        s.add(job)
        s.flush()
        for size in (3 << 30, 5 << 30):  # past 32 bits in total
            point = RestorePoint(
                vm_id=vm.id, job_id=job.id, repository_id=repo.id, status=PointStatus.COMPLETE
            )
            s.add(point)
            s.flush()
            s.add(
                RestorePointDisk(
                    restore_point_id=point.id,
                    disk_key=2000,
                    file_path=f"{vm.id}/2000/{point.id}.qcow2",
                    backup_type="full",
                    virtual_size=10 << 30,
                    file_size=size,
                )
            )
    hub.housekeeping()
    with hub.db.session() as s:
        by_repo = {
            r.repository_id: r.backup_bytes for r in s.scalars(select(RepositoryUsageSample))
        }
    assert by_repo == {repo.id: 8 << 30, other.id: 0}


def test_a_missing_or_unmounted_repository_does_not_stop_housekeeping(
    hub: Hub, tmp_path: Path
) -> None:
    here = add_repo(hub, tmp_path, "here")
    gone = add_repo(hub, tmp_path, "gone")
    unmounted = add_repo(hub, tmp_path, "unmounted")
    shutil.rmtree(gone.path)
    (unmounted.path / MARKER).unlink()  # what an NFS share not mounted shows
    with hub.db.session() as s:
        s.add(
            Job(
                state=JobState.COMPLETE,
                finished_at=datetime.now(hub.settings.zone) - timedelta(days=90),
            )
        )
    report = hub.housekeeping()
    assert report.usage_samples == 1
    assert report.removed_tasks == 1  # the rest of housekeeping ran
    assert samples(hub) == [(here.id, hub.today())]


def test_samples_older_than_two_years_go(hub: Hub, tmp_path: Path) -> None:
    repo = add_repo(hub, tmp_path, "repo")
    today = hub.today()
    oldest_kept = today - timedelta(days=KEEP_DAYS)
    assert KEEP_DAYS >= 2 * 365
    for day in (oldest_kept - timedelta(days=1), oldest_kept):
        hub.usage_history.sample([repo], day)
    hub.housekeeping()
    assert samples(hub) == [(repo.id, oldest_kept), (repo.id, today)]


def test_the_api_answers_the_samples_oldest_first(hub: Hub, tmp_path: Path) -> None:
    repo = add_repo(hub, tmp_path, "repo")
    add_repo(hub, tmp_path, "other")
    today = hub.today()
    for back in (3, 0, 10, 1):  # written in no order
        hub.usage_history.sample([repo], today - timedelta(days=back))
    viewer = hub.tokens.create("viewer", Role.VIEWER)
    with TestClient(create_app(hub), headers={"Authorization": f"Bearer {viewer}"}) as client:
        url = f"/api/v1/repositories/{repo.name}/usage-history"
        answer = client.get(url)
        assert answer.status_code == 200, answer.text
        days = [date.fromisoformat(p["day"]) for p in answer.json()]
        assert days == [today - timedelta(days=n) for n in (10, 3, 1, 0)]
        point = answer.json()[-1]
        assert set(point) == {"day", "used", "free", "total", "backup"}
        assert point["total"] == capacity_of(repo.path).total

        recent = client.get(url, params={"days": 4}).json()
        assert [date.fromisoformat(p["day"]) for p in recent] == days[1:]
        by_id = client.get(f"/api/v1/repositories/{repo.id}/usage-history").json()
        assert [p["day"] for p in by_id] == [p["day"] for p in answer.json()]

        missing = client.get("/api/v1/repositories/nope/usage-history")
        assert missing.status_code == 404
        assert "nope" in missing.json()["message"]
        assert client.get(url, params={"days": 0}).status_code == 422
