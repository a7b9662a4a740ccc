"""Verification holds the VM like any task (issue 13, point 4): it never runs
beside a backup writing a layer on the points it judges, nor beside a prune."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sendense.common.errors import VmBusy
from sendense.hub.api.queries import Queries
from sendense.hub.backup.disks import DiskSpec
from sendense.hub.db.models import Vm
from sendense.hub.retention.rules import KeepRules
from sendense.hub.service import Hub
from sendense.hub.verify.verifier import PointVerdict, VerifyProgress
from tests.rig.chains import hub_backup
from tests.rig.tasks import wait_task

MiB = 1 << 20


@pytest.fixture
def point(hub: Hub, repo_dir: Path) -> str:
    hub.repos.add(str(repo_dir))
    data = bytes(range(256)) * (4 * MiB // 256)
    when = datetime(2026, 5, 1, tzinfo=UTC)
    return hub_backup(hub, "vm1", {2000: data}, {2000: [(0, len(data))]}, when)


def test_verification_waits_for_no_backup_and_a_backup_for_no_verification(
    hub: Hub, api: TestClient, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = hub.ledger.prepare("vm1", [DiskSpec(2000, 4 * MiB)], "auto")
    refused = api.post("/api/v1/verify", json={"target": "vm1"})
    assert refused.status_code == 409
    assert refused.json()["error"] == "vm_busy"
    assert backup.job_id in refused.json()["message"]
    hub.ledger.fail(backup.job_id, "test over")

    # Hold the verification at its start, as a long one would be.
    started, release = threading.Event(), threading.Event()
    verify = hub.verifier.verify

    def held(point_ids: list[str], progress: VerifyProgress) -> list[PointVerdict]:
        started.set()
        release.wait(30)
        return verify(point_ids, progress)

    monkeypatch.setattr(hub.verifier, "verify", held)
    queued = api.post("/api/v1/verify", json={"target": "vm1"})
    assert queued.status_code == 202
    task = queued.json()["job_id"]
    assert started.wait(30)
    with pytest.raises(VmBusy) as busy:
        hub.ledger.prepare("vm1", [DiskSpec(2000, 4 * MiB)], "auto")
    assert busy.value.task_id == task
    with pytest.raises(VmBusy):
        hub.prune.run("vm1", KeepRules(last=1))
    release.set()
    assert wait_task(api, task)["state"] == "complete"
    assert Queries(hub.db).restore_point(point).status == "complete"
    with hub.db.session() as s:
        assert s.query(Vm).filter_by(name="vm1").one().active_job_id is None
    after = hub.ledger.prepare("vm1", [DiskSpec(2000, 4 * MiB)], "auto")  # free again
    hub.ledger.fail(after.job_id, "test over")
