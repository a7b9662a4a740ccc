"""Two hubs on one database (PostgreSQL shared by a site's hubs, or one SQLite
file): a hub that starts cleans up what its own crash left, never the other
hub's running backup (issue 13, point 8)."""

from __future__ import annotations

from pathlib import Path

from sendense.common.processes import is_alive
from sendense.hub.api.queries import Queries
from sendense.hub.backup.disks import DiskSpec
from sendense.hub.db.models import Vm
from sendense.hub.service import Hub
from tests.conftest import make_settings

MiB = 1 << 20


def test_a_starting_hub_leaves_the_other_hubs_backup_running(
    tmp_path: Path, database_url: str, repo_dir: Path
) -> None:
    first = Hub.open(make_settings(tmp_path / "a", database_url, roots=[tmp_path]))
    second: Hub | None = None
    try:
        first.repos.add(str(repo_dir))
        job = first.ledger.prepare("shared-vm", [DiskSpec(2000, 64 * MiB)], "full")
        pids = [e.pid for e in first.exports.list() if e.job_id == job.job_id]
        assert pids
        files = list(repo_dir.rglob("*.qcow2"))

        second = Hub.open(make_settings(tmp_path / "b", database_url, roots=[tmp_path]))
        second.reconcile()  # what `hub serve` does at every start

        assert Queries(first.db).job(job.job_id).state == "running"
        assert all(pid is not None and is_alive(pid) for pid in pids)
        assert {a.job_id for a in first.ports.status().allocations} == {job.job_id}
        with first.db.session() as s:
            vm = s.query(Vm).filter_by(name="shared-vm").one()
            assert vm.active_job_id == job.job_id
        assert list(repo_dir.rglob("*.qcow2")) == files

        # The first hub stops without ending its job (as a crash would leave the
        # row); its own next start cleans up that job.
        first.close()
        again = Hub.open(make_settings(tmp_path / "a", database_url, roots=[tmp_path]))
        try:
            again.reconcile()
            assert Queries(again.db).job(job.job_id).state == "failed"
            assert not any(pid is not None and is_alive(pid) for pid in pids)
            assert again.ports.status().allocations == []
            assert list(repo_dir.rglob("*.qcow2")) == []
        finally:
            again.close()
    finally:
        first.close()  # closing twice is harmless
        if second is not None:
            second.close()
