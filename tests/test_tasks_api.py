"""/api/v1/tasks with a hub, a node and its tunnel as processes: a backup's live
events over SSE, a reconnect that resumes, filters, cancel on both sides, and
bad input."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from httpx_sse import connect_sse

from sendense.common.contract import ACTIVE_STATES
from tests.rig.cli import sendense
from tests.rig.node_tasks import snapshot_names, unique
from tests.rig.procs import pids_with
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, fill, flat_file

SLOW = {"chunk_mib": "1", "readers_per_disk": "1", "writes_in_flight": "1"}


@pytest.fixture
def site(tmp_path: Path, vcsim: Vcsim) -> Iterator[Site]:
    site = Site(tmp_path, None, **SLOW)
    try:
        site.start()
        site.enroll_and_connect()
        site.add_vcenter(vcsim)
        repo = tmp_path / "repo"
        repo.mkdir()
        assert site.api.post("/api/v1/repositories", json={"path": str(repo)}).status_code == 201
        yield site
    finally:
        site.stop()


def data_vm(si: Any, vcsim: Vcsim, mib: int) -> tuple[str, Any]:
    name = unique("tasks")
    vm = create_vm(si, name, [(2000, mib * MiB, SCSI0), (2001, 16 * MiB, SCSI0)], cbt=True)
    fill(flat_file(vcsim, vm, 2000), [(o * MiB, bytes([o % 251 + 1]) * MiB) for o in range(mib)])
    fill(flat_file(vcsim, vm, 2001), [(0, b"\x07" * 16 * MiB)])
    return name, vm


def events(site: Site, task_id: str, **headers: str) -> Iterator[tuple[str, str, Any]]:
    """(event, id, data) until the stream ends."""
    with connect_sse(
        site.api, "GET", f"/api/v1/tasks/{task_id}/events", headers=headers, timeout=120
    ) as stream:
        assert stream.response.status_code == 200
        for sse in stream.iter_sse():
            yield sse.event, sse.id, json.loads(sse.data)


def test_a_backup_streams_rising_progress_per_disk_then_complete(
    site: Site, vcsim: Vcsim, si: Any
) -> None:
    name, _ = data_vm(si, vcsim, 128)
    task_id = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]

    done: dict[int, list[int]] = {}
    states: list[str] = []
    log_ids: list[int] = []
    for event, event_id, data in events(site, task_id):
        if event == "progress":
            for disk in data["disks"]:
                done.setdefault(disk["disk_key"], []).append(disk["bytes_done"])
        elif event == "state":
            states.append(data["state"])
        elif event == "log":
            log_ids.append(int(event_id))
    final = site.api.get(f"/api/v1/tasks/{task_id}").json()
    assert states[-1] == "complete", final["error"]
    assert set(done) == {2000, 2001}
    for key, figures in done.items():
        assert figures == sorted(figures), (key, figures)  # never goes back
    assert len(done[2000]) >= 3  # seen moving, not just the end
    assert done[2000][-1] == 128 * MiB
    assert log_ids == sorted(log_ids)
    assert len(set(log_ids)) == len(log_ids)

    task = site.api.get(f"/api/v1/tasks/{task_id}").json()
    assert task["state"] == "complete"
    assert task["vm"] == name
    assert task["started_by"].startswith("token:")
    assert task["kind"] == "backup"

    # A reconnect after the end gets only the final state (and lines after its id).
    after = log_ids[-1] if log_ids else 0
    again = list(events(site, task_id, **{"Last-Event-ID": str(after)}))
    assert [e for e, _, _ in again if e == "log"] == []
    assert again[-1][0] == "state"
    assert again[-1][2]["state"] == "complete"

    # Filters and paging find it; the log past its end is empty, not an error.
    listed = site.api.get("/api/v1/tasks", params={"vm": name, "kind": "backup"}).json()
    assert [t["id"] for t in listed["items"]] == [task_id]
    assert listed["total"] == 1
    assert (
        site.api.get("/api/v1/tasks", params={"vm": name, "state": "failed"}).json()["total"] == 0
    )
    future = site.api.get("/api/v1/tasks", params={"since": "2999-01-01T00:00:00Z"}).json()
    assert future["items"] == []
    log = site.api.get(f"/api/v1/tasks/{task_id}/log", params={"after": 10**9})
    assert log.status_code == 200
    assert log.json()["lines"] == []


def test_cancel_mid_copy_ends_the_task_on_both_sides_with_no_snapshot(
    site: Site, vcsim: Vcsim, si: Any
) -> None:
    name, vm = data_vm(si, vcsim, 256)
    task_id = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
    for event, _, data in events(site, task_id):
        if event == "progress" and any(d["bytes_done"] > 0 for d in data["disks"]):
            break
    # Hold the hub's exports so the copy cannot end before the cancel lands.
    pids = pids_with(name)
    assert pids, "no export for the job"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        with site.node_api() as node:
            assert node.get(f"/api/v1/jobs/{task_id}").json()["state"] in ACTIVE_STATES
            cancelled = site.api.post(f"/api/v1/tasks/{task_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["state"] == "cancelled"
            assert cancelled.json()["error_code"] == "cancelled"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    final = [data for event, _, data in events(site, task_id) if event == "state"][-1]
    assert final["state"] == "cancelled"
    deadline = time.monotonic() + 60
    with site.node_api() as node:
        while node.get(f"/api/v1/jobs/{task_id}").json()["state"] in ACTIVE_STATES:
            assert time.monotonic() < deadline, "the node never stopped"
            time.sleep(0.2)
        assert node.get(f"/api/v1/jobs/{task_id}").json()["state"] == "cancelled"
    while snapshot_names(vm):
        assert time.monotonic() < deadline, "the node's snapshot is still there"
        time.sleep(0.2)
    while site.api.get("/api/v1/ports").json()["used"] != 0:
        assert time.monotonic() < deadline, "the job's ports are still in use"
        time.sleep(0.2)
    assert site.api.get(f"/api/v1/tasks/{task_id}").json()["state"] == "cancelled"
    assert site.api.get("/api/v1/restore-points", params={"vm": name}).json() == []

    # A second cancel, an unknown task and bad filters: clear 4xx answers.
    again = site.api.post(f"/api/v1/tasks/{task_id}/cancel")
    assert again.status_code == 409
    assert "ended" in again.json()["message"]
    unknown = "0" * 32
    for path in ("", "/log", "/events"):
        missing = site.api.get(f"/api/v1/tasks/{unknown}{path}")
        assert missing.status_code == 404
        assert "does not exist" in missing.json()["message"]
    assert site.api.post(f"/api/v1/tasks/{unknown}/cancel").status_code == 404
    assert site.api.get("/api/v1/tasks", params={"kind": "nonsense"}).status_code == 422
    assert site.api.get(f"/api/v1/tasks/{task_id}/log", params={"after": -1}).status_code == 422


def test_the_cli_watches_lists_shows_logs_and_cancels_tasks(
    site: Site, vcsim: Vcsim, si: Any
) -> None:
    name, _ = data_vm(si, vcsim, 32)
    env = site.cli_env()
    run = sendense("backup", "run", name, "--watch", env=env)
    assert run.returncode == 0, run.stderr
    task_id = run.stdout.split("job ", 1)[1].split()[0]
    assert f"job {task_id} complete" in run.stdout
    assert "disk 2000" in run.stdout  # its progress bar, fed by the event stream

    listed = sendense("tasks", "list", "--vm", name, "--since", "1h", env=env)
    assert listed.returncode == 0, listed.stderr
    assert task_id in listed.stdout
    assert "complete" in listed.stdout
    assert name in sendense("tasks", "list", "--kind", "backup", env=env).stdout

    shown = sendense("tasks", "show", task_id, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "state: complete" in shown.stdout
    assert "bottleneck" in shown.stdout  # where the backup's time went

    log = sendense("tasks", "log", task_id, env=env)
    assert log.returncode == 0, log.stderr
    lines = site.api.get(f"/api/v1/tasks/{task_id}/log").json()["lines"]
    assert len(log.stdout.splitlines()) == len(lines)  # one line each, no wrapping
    assert all(x["message"] in log.stdout for x in lines)
    assert any(x["source"] == "node" for x in lines)
    followed = sendense("tasks", "log", task_id, "--follow", env=env)
    assert followed.returncode == 0, followed.stderr
    assert f"task {task_id} complete" in followed.stdout

    ended = sendense("tasks", "cancel", task_id, env=env)
    assert ended.returncode == 4  # a conflict: one line, no traceback
    assert ended.stderr.strip().startswith("error:")
    assert "has ended" in ended.stderr
    assert len(ended.stderr.strip().splitlines()) == 1
    unknown = sendense("tasks", "show", "0" * 32, env=env)
    assert unknown.returncode == 3
    assert "does not exist" in unknown.stderr
    bad = sendense("tasks", "list", "--since", "yesterday", env=env)
    assert bad.returncode == 2
    assert "--since" in bad.stderr
