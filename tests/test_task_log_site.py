"""A task's log through hub, node and tunnel as processes (issue 14, point 3): a
backup's log file holds the hub's lines and the node's, in order, while it runs
(its writes held) and after it ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sendense.hub.tasks.task_log import LogLine, TaskLogs
from tests.rig.node_tasks import snapshot_names, unique
from tests.rig.site import Site
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, fill, flat_file
from tests.test_orchestrated_failures import export_paused


@pytest.fixture
def site(tmp_path: Path, vcsim: Vcsim) -> Iterator[Site]:
    site = Site(tmp_path / "site", repository_roots=tmp_path)
    try:
        site.start()
        site.enroll_and_connect()
        site.add_vcenter(vcsim)
        yield site
    finally:
        site.stop()


def wait_line(logs: TaskLogs, task_id: str, source: str, start: str) -> list[LogLine]:
    deadline = time.monotonic() + 60
    while True:
        lines = logs.read(task_id)
        if any(x.source == source and x.message.startswith(start) for x in lines):
            return lines
        assert time.monotonic() < deadline, [(x.source, x.message) for x in lines]
        time.sleep(0.1)


def order(lines: list[LogLine], *wanted: tuple[str, str]) -> list[int]:
    """The line numbers of the first line of each (source, start of message)."""
    return [
        next((x.n for x in lines if x.source == source and x.message.startswith(start)), -1)
        for source, start in wanted
    ]


def test_a_backups_log_holds_hub_and_node_lines_while_it_runs_and_after(
    site: Site, vcsim: Vcsim, si: Any, repo_dir: Path
) -> None:
    assert site.api.post("/api/v1/repositories", json={"path": str(repo_dir)}).is_success
    name = unique("tasklog")
    vm = create_vm(si, name, [(2000, 16 * MiB, SCSI0)], cbt=True)
    fill(flat_file(vcsim, vm, 2000), [(0, b"\x42" * MiB)])
    logs = TaskLogs(site.hub.data_dir / "task-logs")

    job_id = site.api.post("/api/v1/backups", json={"vm": name}).json()["job_id"]
    with site.node_api() as node, export_paused(node, job_id, repo_dir):
        running = wait_line(logs, job_id, "node", "copy planned")
        assert site.api.get(f"/api/v1/jobs/{job_id}").json()["state"] == "running"
        # The lines are the log's, not in the progress every watcher polls.
        progress = site.api.get(f"/api/v1/jobs/{job_id}/progress").json()
        assert progress["state"] == "running"
        assert progress["log"] == []
        # The node sends the lines after the last the hub has (all of them here).
        full = node.get(f"/api/v1/jobs/{job_id}").json()["log"]
        assert [x["seq"] for x in full] == list(range(1, len(full) + 1))
        after = node.get(f"/api/v1/jobs/{job_id}", params={"log_after": 2}).json()["log"]
        assert after == full[2:]
        refused = node.get(f"/api/v1/jobs/{job_id}", params={"log_after": -1})
        assert refused.status_code == 422, refused.text
    first = order(
        running,
        ("hub", "backup queued"),
        ("hub", "backup started"),
        ("node", "job started"),
        ("node", "snapshot created"),
        ("node", "copy planned"),
    )
    assert -1 not in first, [(x.source, x.message) for x in running]
    assert first == sorted(first), [(x.source, x.message) for x in running]

    assert site.wait_job(job_id)["state"] == "complete"
    done = wait_line(logs, job_id, "hub", "backup complete")
    assert done[: len(running)] == running  # lines are only ever added
    last = order(
        done,
        ("node", "copy planned"),
        ("node", "copy done"),
        ("node", "snapshot removed"),
        ("node", "job complete"),
        ("hub", "backup complete"),
    )
    assert -1 not in last, [(x.source, x.message) for x in done]
    assert last == sorted(last), [(x.source, x.message) for x in done]
    assert (done[-1].source, done[-1].message) == ("hub", "backup complete")
    assert len([x for x in done if x.message.startswith("snapshot created")]) == 1
    assert snapshot_names(vm) == []
