"""The seed's VM: pgtest1 with disk 2000 (102 GiB) and 2001 (5 GiB) through the hub."""

from __future__ import annotations

from pathlib import Path

from sendense.hub.api.queries import Queries
from sendense.hub.backup.disks import DiskResult, DiskSpec
from sendense.hub.service import Hub
from sendense.nbd.qemu_img import QemuImg
from tests.rig.nbd_data import expected_raw, pattern, write_through_nbd
from tests.rig.procs import listening_addresses, pids_with

GiB = 1 << 30
DISKS = {2000: 102 * GiB, 2001: 5 * GiB}


def test_pgtest1_two_disks_end_to_end_on_the_hub(hub: Hub, repo_dir: Path, tmp_path: Path) -> None:
    hub.repos.add(str(repo_dir))
    job = hub.ledger.prepare(
        "pgtest1", [DiskSpec(key, size) for key, size in DISKS.items()], "full"
    )
    p0, p1 = (d.target.port for d in job.disks)
    assert job.nbd_targets == (
        f"2000:nbd://127.0.0.1:{p0}/pgtest1-disk0,2001:nbd://127.0.0.1:{p1}/pgtest1-disk1"
    )
    assert p0 != p1
    assert {p0, p1} <= set(range(hub.ports.first, hub.ports.last + 1))
    assert hub.ports.status().used == 2
    assert len(pids_with(str(repo_dir))) == 2
    for port in (p0, p1):  # no TCP port: a socket only the job's node reaches
        assert listening_addresses(port) == []
        assert hub.exports.uri(port, "x").startswith("nbd+unix:///x?socket=")

    writes = {
        2000: [
            (0, pattern(1, 1 << 20)),
            (50 * GiB, pattern(2, 4 << 20)),
            (DISKS[2000] - (1 << 20), pattern(3, 1 << 20)),
        ],
        2001: [(4096 * 16, pattern(4, 2 << 20)), (DISKS[2001] - 65536, pattern(5, 65536))],
    }
    for disk in job.disks:
        write_through_nbd(hub.exports.uri(disk.target.port, disk.target.export), writes[disk.key])

    point_id = hub.ledger.finish(job.job_id, {k: DiskResult(change_id=f"52 {k}/1") for k in DISKS})

    assert hub.ports.status().used == 0
    assert pids_with(str(repo_dir)) == []
    point = Queries(hub.db).restore_point(point_id)
    assert point.status == "complete"
    assert [d.disk_key for d in point.disks] == [2000, 2001]
    qemu_img = QemuImg()
    for stored in point.disks:
        image = repo_dir / stored.file_path
        assert image.exists()
        assert stored.status == "complete"
        assert stored.change_id == f"52 {stored.disk_key}/1"
        assert stored.virtual_size == DISKS[stored.disk_key]
        raw = expected_raw(
            tmp_path / f"{stored.disk_key}.raw", DISKS[stored.disk_key], writes[stored.disk_key]
        )
        assert qemu_img.compare(raw, image, "raw", "qcow2")
    assert Queries(hub.db).job(job.job_id).state == "complete"
