"""Disk conversions for downloads (QCOW2, VMDK) check space first and are limited in
number (issue 13, point 5's last part): a download never fills the hub's disk,
and a burst of downloads does not run a whole-disk copy each at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sendense.common.errors import InsufficientSpace, Unavailable
from sendense.hub.restore.conversion import DiskConverter
from sendense.hub.service import Hub
from tests.rig.chains import hub_backup

MiB = 1 << 20


@pytest.fixture
def point(hub: Hub, repo_dir: Path) -> str:
    hub.repos.add(str(repo_dir))
    data = bytes(range(256)) * (8 * MiB // 256)
    when = datetime(2026, 6, 1, tzinfo=UTC)
    return hub_backup(hub, "vm1", {2000: data}, {2000: [(0, len(data))]}, when)


def scratch_files(hub: Hub) -> list[Path]:
    return [p for p in hub.settings.scratch_dir.rglob("*") if p.is_file()]


def test_a_conversion_that_would_not_leave_the_reserve_is_refused(
    hub: Hub, api: TestClient, point: str
) -> None:
    greedy = DiskConverter(hub.db, hub.repos, hub.settings.scratch_dir, reserve_bytes=1 << 62)
    with pytest.raises(InsufficientSpace):
        greedy.to_scratch(point, 2000, "qcow2")
    assert scratch_files(hub) == []
    hub.converter = greedy  # what the API serves with
    answer = api.get(f"/api/v1/restore-points/{point}/disks/2000/download?format=vmdk")
    assert answer.status_code == 507
    assert answer.json()["error"] == "insufficient_space"
    assert scratch_files(hub) == []
    raw = api.get(f"/api/v1/restore-points/{point}/disks/2000/download?format=raw")
    assert raw.status_code == 200  # a raw download streams: it converts nothing


def test_conversions_beyond_the_limit_are_refused_until_one_ends(
    hub: Hub, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    converter = DiskConverter(hub.db, hub.repos, hub.settings.scratch_dir, max_running=1)
    started, release = threading.Event(), threading.Event()
    convert = hub.repos.qemu_img.convert

    def held(
        source: Path, target: Path, output: list[str], progress: Callable[[float], None] | None
    ) -> None:
        started.set()
        release.wait(30)
        convert(source, target, output, progress)

    monkeypatch.setattr(hub.repos.qemu_img, "convert", held)
    results = []
    first = threading.Thread(
        target=lambda: results.append(converter.to_scratch(point, 2000, "qcow2"))
    )
    first.start()
    try:
        assert started.wait(30)
        with pytest.raises(Unavailable):
            converter.to_scratch(point, 2000, "vmdk")
    finally:
        release.set()
        first.join(60)
    assert len(results) == 1
    converter.discard(results[0])
    again = converter.to_scratch(point, 2000, "vmdk")  # a slot is free again
    assert again.path.exists()
    converter.discard(again)
    assert scratch_files(hub) == []
