"""`sendense repo check`: a repository that disagrees with the database is found
out, file by file, and `--repair` does only what is safe; through the CLI against
a real hub process."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sendense.hub.api.queries import Queries
from sendense.hub.db.models import PointStatus, RestorePoint
from sendense.hub.service import Hub
from sendense.nbd.qemu_img import QemuImg
from tests.rig.chains import hub_backup
from tests.rig.cli import sendense
from tests.rig.hub import HubProcess

MiB = 1 << 20
DAY0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def chain(hub: Hub, repo_dir: Path) -> list[str]:
    """Three points of one disk: a full and two incrementals."""
    hub.repos.add(str(repo_dir), "main")
    data = bytearray(8 * MiB)
    points = []
    for day in range(3):
        data[day * MiB : (day + 1) * MiB] = bytes([day + 1]) * MiB
        when = DAY0 + timedelta(days=day)
        changed = {2000: [(day * MiB, MiB)]}
        points.append(hub_backup(hub, "vm1", {2000: bytes(data)}, changed, when))
    return points


@pytest.fixture
def served(hub: Hub, sqlite_url: str, chain: list[str]) -> Iterator[dict[str, str]]:
    process = HubProcess(hub.settings.data_dir, sqlite_url)
    try:
        process.start()
        yield process.cli_env(process.initial_token())
    finally:
        process.stop()


def layer_file(hub: Hub, repo_dir: Path, point: str) -> Path:
    return repo_dir / Queries(hub.db).restore_point(point).disks[0].file_path


def status(hub: Hub, point: str) -> PointStatus:
    with hub.db.session() as s:
        return s.get_one(RestorePoint, point).status


def test_a_clean_repository_passes(served: dict[str, str]) -> None:
    done = sendense("repo", "check", "main", env=served)
    assert done.returncode == 0, done.stderr
    assert "3 layers" in done.stdout


def test_each_finding_is_named_and_repair_does_what_is_safe(
    hub: Hub, repo_dir: Path, chain: list[str], served: dict[str, str]
) -> None:
    full, middle, top = chain
    orphan = repo_dir / "stray" / "left.qcow2"
    orphan.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(orphan), "1M"], check=True)
    layer_file(hub, repo_dir, middle).unlink()  # a file gone
    top_file = layer_file(hub, repo_dir, top)
    skipping = Path("..") / ".." / layer_file(hub, repo_dir, full).relative_to(repo_dir)
    # The top's header skips the middle layer: it names the full as its parent.
    QemuImg().rebase(top_file, str(skipping), unsafe=True)
    before = {p.name for p in repo_dir.rglob("*") if p.is_file()}

    found = sendense("repo", "check", "main", env=served)
    assert found.returncode == 10
    assert "orphan_file" in found.stdout
    assert "missing_file" in found.stdout
    assert "wrong_backing" in found.stdout
    assert {p.name for p in repo_dir.rglob("*") if p.is_file()} == before  # a check changes nothing
    assert {status(hub, p) for p in chain} == {PointStatus.COMPLETE}

    repaired = sendense("repo", "check", "main", "--repair", env=served)
    assert repaired.returncode == 0, repaired.stderr
    assert not orphan.exists()
    assert status(hub, middle) == PointStatus.INVALID  # its file is gone
    assert status(hub, top) == PointStatus.INVALID  # it reads through the wrong parent
    assert status(hub, full) == PointStatus.COMPLETE  # untouched
    assert top_file.exists()  # never deleted, only marked
    again = sendense("repo", "check", "main", env=served)
    assert again.returncode == 0, again.stdout
    nxt = Queries(hub.db).restore_point(hub_backup_after(hub)).disks[0]
    assert nxt.backup_type == "full"  # never chained on a layer found broken
    assert nxt.parent_id is None


def hub_backup_after(hub: Hub) -> str:
    """The next backup of the disk."""
    data = bytearray(8 * MiB)
    data[0:MiB] = bytes([1]) * MiB
    return hub_backup(hub, "vm1", {2000: bytes(data)}, {2000: [(0, MiB)]}, DAY0 + timedelta(days=9))


def test_bad_input_is_one_line(served: dict[str, str]) -> None:
    unknown = sendense("repo", "check", "nope", env=served)
    assert unknown.returncode == 3
    assert unknown.stderr.count("\n") == 1
    assert "Traceback" not in unknown.stderr
