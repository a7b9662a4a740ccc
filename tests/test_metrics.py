"""`GET /metrics` after a full, an incremental and a failed backup through a real
hub, node and tunnel: Prometheus' own parser reads it, and every figure is the
one the database (through the API) and the repository's file system hold."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.rig.cli import sendense
from tests.rig.node_tasks import unique
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, SCSI1, MiB, create_vm, fill, flat_file


@pytest.fixture
def site(tmp_path: Path, vcsim: Vcsim, repo_dir: Path) -> Iterator[Site]:
    site = Site(tmp_path)
    try:
        site.start()
        site.enroll_and_connect()
        site.add_vcenter(vcsim)
        assert site.api.post("/api/v1/repositories", json={"path": str(repo_dir)}).is_success
        yield site
    finally:
        site.stop()


def scrape(site: Site, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with site.hub.client(token) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_metrics_match_the_database_after_a_full_an_incremental_and_a_failure(
    site: Site, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    name = unique("metrics")
    vm = create_vm(si, name, [(2000, 32 * MiB, SCSI0), (2016, 8 * MiB, SCSI1)], cbt=True)
    fill(flat_file(vcsim, vm, 2000), [(0, b"\x11" * 4 * MiB)])
    fill(flat_file(vcsim, vm, 2016), [(MiB, b"\x22" * MiB)])
    for _ in range(2):
        done = sendense("backup", "run", name, "--watch", env=site.cli_env())
        assert done.returncode == 0, done.stdout + done.stderr
        fill(flat_file(vcsim, vm, 2000), [(8 * MiB, b"\x33" * 2 * MiB)])
    # A failed backup: the vCenter's login no longer works.
    wrong = site.cli_env() | {"SENDENSE_VCENTER_PASSWORD": "not-" + vcsim.password[:5]}
    assert sendense("vcenter", "passwd", vcsim.host, env=wrong).returncode == 0
    failed = site.api.post("/api/v1/backups", json={"vm": name})
    assert failed.is_success, failed.text
    assert site.wait_job(failed.json()["job_id"])["state"] == "failed"

    viewer = site.api.post("/api/v1/tokens", json={"name": "prometheus", "role": "viewer"})
    assert viewer.status_code == 201, viewer.text
    metrics = scrape(site, viewer.json()["token"])

    points = site.api.get("/api/v1/restore-points", params={"vm": name}).json()
    assert [p["status"] for p in points] == ["complete", "complete"]
    newest = max(points, key=lambda p: p["completed_at"])
    jobs = {j["id"]: j for j in site.api.get("/api/v1/jobs").json()}
    vm_id = newest["vm_id"]
    vm_row = site.api.get(f"/api/v1/vms/{vm_id}").json()
    labels = tuple(sorted({"vm": name, "vm_id": vm_id, "vcenter": vm_row["vcenter"]}.items()))

    def vm_metric(metric: str) -> float:
        return metrics[(metric, labels)]

    completed = datetime.fromisoformat(newest["completed_at"]).timestamp()
    assert vm_metric("sendense_vm_last_success_timestamp_seconds") == pytest.approx(completed)
    assert vm_metric("sendense_vm_restore_points") == 2
    disks = newest["disks"]
    assert vm_metric("sendense_vm_last_backup_read_bytes") == sum(d["data_bytes"] for d in disks)
    assert vm_metric("sendense_vm_last_backup_written_bytes") == sum(d["file_size"] for d in disks)
    job = jobs[newest["job_id"]]
    ran = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
    assert vm_metric("sendense_vm_last_backup_duration_seconds") == pytest.approx(
        ran.total_seconds()
    )

    by_state: dict[str, float] = {}
    for (metric, label), value in metrics.items():
        if metric == "sendense_tasks" and dict(label)["kind"] == "backup":
            by_state[dict(label)["state"]] = value
    expected: dict[str, float] = {}
    for j in jobs.values():
        if j["kind"] == "backup":
            expected[j["state"]] = expected.get(j["state"], 0) + 1
    assert by_state == expected
    assert by_state["complete"] == 2
    assert by_state["failed"] == 1

    repo = site.api.get("/api/v1/repositories").json()[0]
    repo_labels = tuple(sorted({"repository": repo["name"], "path": str(repo_dir)}.items()))
    on_disk = sum(d["file_size"] for p in points for d in p["disks"])
    assert metrics[("sendense_repository_used_bytes", repo_labels)] == on_disk
    st = os.statvfs(repo_dir)
    assert metrics[("sendense_repository_size_bytes", repo_labels)] == st.f_blocks * st.f_frsize
    assert metrics[("sendense_repository_up", repo_labels)] == 1
    assert metrics[("sendense_nbd_ports_in_use", ())] == 0
    assert metrics[("sendense_nodes", (("state", "connected"),))] == 1
    assert metrics[("sendense_restore_points_invalid", ())] == 0

    # No token, no metrics.
    with site.hub.client("") as anonymous:
        assert anonymous.get("/metrics").status_code == 401
