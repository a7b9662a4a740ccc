"""Prune merges under faults (issue 13, defects 1-3): a power loss in the middle of a
rebase never costs data, one failing merge (no space, repository not mounted) stops
neither the hub nor the other merges, and concurrent prunes never run one merge twice."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sendense.common.errors import InsufficientSpace, ToolFailed
from sendense.hub.api.queries import Queries
from sendense.hub.backup.scheduler import Scheduler
from sendense.hub.db.models import Job, Merge, PointStatus, RestorePoint, RestorePointDisk, Vm
from sendense.hub.repository.repositories import capacity_of
from sendense.hub.retention.policies import PolicyService
from sendense.hub.retention.rules import KeepRules
from sendense.hub.service import Hub
from sendense.nbd.qemu_img import QemuImg
from tests.rig.chains import hub_backup, same_as

SIZE = 1 << 20
PIECE = 64 * 1024
START = datetime(2026, 1, 1, 12, tzinfo=UTC)
LAST_ONE = KeepRules(last=1)


class Crash(BaseException):
    """Stands for the hub's process dying: nothing in the hub catches it."""


def make_points(hub: Hub, repo: Path, vm: str, days: int) -> tuple[list[str], dict[str, bytes]]:
    """A full, then incrementals that each change their own 64 KiB piece (no later
    layer hides an earlier one's change)."""
    if not repo.exists():
        repo.mkdir()
        hub.repos.add(str(repo))
    disk = bytearray(os.urandom(SIZE))
    points, sources = [], {}
    for n in range(days):
        offset = n * 3 * PIECE
        disk[offset : offset + PIECE] = os.urandom(PIECE)
        point = hub_backup(
            hub, vm, {2000: bytes(disk)}, {2000: [(offset, PIECE)]}, START + timedelta(days=n)
        )
        points.append(point)
        sources[point] = bytes(disk)
    return points, sources


def image_of(hub: Hub, repo: Path, point: str) -> Path:
    return repo / Queries(hub.db).restore_point(point).disks[0].file_path


def crash_at_rebase(hub: Hub, monkeypatch: pytest.MonkeyPatch, vm: str) -> None:
    """Prune `vm` and kill the 'process' as the first rebase starts: the merge step is
    recorded, nothing is rebased yet."""

    def crash(*_args: object, **_kwargs: object) -> None:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(hub.repos.qemu_img, "rebase", crash)
        with pytest.raises(Crash):
            hub.prune.run(vm, LAST_ONE)


def half_rebase(child: Path, new_parent: Path) -> None:
    """What a power loss during `qemu-img rebase` can leave: the header already names
    the new parent, the clusters that had to be copied are not in the child."""
    QemuImg().rebase(child, new_parent.name, unsafe=True)


def merges(hub: Hub) -> list[Merge]:
    with hub.db.session() as s:
        rows = list(s.scalars(select(Merge)))
        for row in rows:
            s.expunge(row)
    return rows


def files(repo: Path) -> set[str]:
    return {p.relative_to(repo).as_posix() for p in repo.rglob("*.qcow2")}


def layer_files(hub: Hub) -> set[str]:
    with hub.db.session() as s:
        return set(s.scalars(select(RestorePointDisk.file_path)))


def flip_own_byte(image: Path) -> None:
    """Damage one byte of the layer's own data (not its backing's)."""
    mapped = subprocess.run(
        ["qemu-img", "map", "--output=json", "-f", "qcow2", str(image)],
        check=True,
        capture_output=True,
        text=True,
    )
    extents = json.loads(mapped.stdout)
    offset = next(e["offset"] for e in extents if e["data"] and e["depth"] == 0) + 100
    with image.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 1]))


# Defect 1: a half-rebased child is never taken for a finished merge.


def test_a_child_half_rebased_by_a_power_loss_is_repaired_not_vouched_for(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    points, sources = make_points(hub, repo, "vm1", 3)
    full, doomed, child = (image_of(hub, repo, p) for p in points)
    crash_at_rebase(hub, monkeypatch, "vm1")  # removes points[1] first (newest first)
    half_rebase(child, full)
    assert not same_as(child, sources[points[2]], tmp_path)  # the power loss lost data

    hub.reconcile()  # start-up

    assert same_as(child, sources[points[2]], tmp_path)
    assert merges(hub) == []
    assert not doomed.exists()
    assert files(repo) == layer_files(hub)
    verdicts = hub.verifier.verify([points[2]])
    assert [v.valid for v in verdicts] == [True]
    # The rest of the prune: the full goes, the child becomes standalone.
    assert hub.prune.run("vm1", LAST_ONE).removed == [points[0]]
    assert same_as(child, sources[points[2]], tmp_path)
    assert files(repo) == layer_files(hub) == {child.relative_to(repo).as_posix()}
    assert [v.valid for v in hub.verifier.verify([points[2]])] == [True]


def test_a_half_rebased_child_that_cannot_be_proven_keeps_the_removed_layer(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    points, _ = make_points(hub, repo, "vm1", 3)
    full, doomed, child = (image_of(hub, repo, p) for p in points)
    crash_at_rebase(hub, monkeypatch, "vm1")
    half_rebase(child, full)
    flip_own_byte(doomed)  # the old chain does not read as before either

    hub.reconcile()

    assert doomed.exists()  # nothing more is thrown away
    (step,) = merges(hub)
    assert step.state == "failed"
    assert step.error
    with hub.db.session() as s:
        point = s.get_one(RestorePoint, points[2])
        assert point.status == PointStatus.INVALID  # never a fresh valid checksum
        assert point.disks[0].status == PointStatus.INVALID
    assert [v.valid for v in hub.verifier.verify([points[2]])] == [False]
    hub.reconcile()  # a later start leaves the failed step and its files alone
    assert doomed.exists()
    assert [m.id for m in merges(hub)] == [step.id]


# Defect 2: one failing merge stops neither the hub nor the other merges.


def test_a_repository_not_mounted_at_start_up_is_skipped_then_finished(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    points, sources = make_points(hub, repo, "vm1", 3)
    crash_at_rebase(hub, monkeypatch, "vm1")
    before = merges(hub)
    assert len(before) == 1
    offline = tmp_path / "share"
    repo.rename(offline)
    repo.mkdir()  # the empty mountpoint of an NFS share not mounted yet

    hub.reconcile()  # the hub starts

    assert [m.id for m in merges(hub)] == [before[0].id]
    assert merges(hub)[0].error
    assert files(repo) == set()
    repo.rmdir()
    offline.rename(repo)  # mounted

    hub.reconcile()

    assert merges(hub) == []
    assert files(repo) == layer_files(hub)
    for point in (points[0], points[2]):
        assert same_as(image_of(hub, repo, point), sources[point], tmp_path)


def test_a_failing_merge_does_not_stop_the_others(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    points1, sources1 = make_points(hub, repo, "vm1", 3)
    points2, sources2 = make_points(hub, repo, "vm2", 3)
    stuck = image_of(hub, repo, points1[2])
    failing = {stuck, image_of(hub, repo, points2[2])}
    real_rebase = hub.repos.qemu_img.rebase

    def no_space(path: Path, backing: str, *args: object, **kwargs: object) -> None:
        if path in failing:
            raise ToolFailed(["qemu-img", "rebase"], 1, "No space left on device")
        real_rebase(path, backing, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hub.repos.qemu_img, "rebase", no_space)
    for vm in ("vm1", "vm2"):
        with pytest.raises(ToolFailed):
            hub.prune.run(vm, LAST_ONE)
    assert len(merges(hub)) == 2
    failing.remove(image_of(hub, repo, points2[2]))  # vm2's repository has room again

    hub.reconcile()  # start-up

    (left,) = merges(hub)
    assert left.child_id == Queries(hub.db).restore_point(points1[2]).disks[0].id
    assert left.error
    assert image_of(hub, repo, points1[1]).exists()
    with hub.db.session() as s:
        assert s.get(RestorePoint, points2[1]) is None  # vm2's merge went on
    assert same_as(image_of(hub, repo, points2[2]), sources2[points2[2]], tmp_path)
    assert same_as(stuck, sources1[points1[2]], tmp_path)
    monkeypatch.undo()
    assert hub.prune.run("vm1", LAST_ONE).removed == [points1[0]]
    assert merges(hub) == []
    assert same_as(stuck, sources1[points1[2]], tmp_path)
    assert files(repo) == layer_files(hub)


def test_a_rebase_that_copies_a_whole_full_is_refused_without_the_space(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    points, sources = make_points(hub, repo, "vm1", 2)
    full, child = (image_of(hub, repo, p) for p in points)
    real_measure = hub.repos.qemu_img.measure

    def larger_than_the_free_space(path: Path) -> int:
        return real_measure(path) + capacity_of(repo).free

    monkeypatch.setattr(hub.repos.qemu_img, "measure", larger_than_the_free_space)
    with pytest.raises(InsufficientSpace):
        hub.prune.run("vm1", LAST_ONE)
    (step,) = merges(hub)
    assert step.error
    assert full.exists()
    assert hub.repos.qemu_img.info(child)["backing-filename"] == full.name  # not started
    assert same_as(child, sources[points[1]], tmp_path)
    monkeypatch.undo()
    hub.reconcile()
    assert merges(hub) == []
    assert not full.exists()
    assert "backing-filename" not in hub.repos.qemu_img.info(child)
    assert same_as(child, sources[points[1]], tmp_path)


# Defect 3: concurrent prunes, and a policy run that meets a bug.


class Contended:
    """A lock that tells when a second caller has to wait for it."""

    def __init__(self, inner: threading.Lock, waiting: threading.Event) -> None:
        self.inner = inner
        self.waiting = waiting

    def __enter__(self) -> None:
        if not self.inner.acquire(blocking=False):
            self.waiting.set()
            self.inner.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.inner.release()


def test_concurrent_recovers_never_run_one_merge_twice(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    points, sources = make_points(hub, repo, "vm1", 3)
    crash_at_rebase(hub, monkeypatch, "vm1")
    second_arrived = threading.Event()
    monkeypatch.setattr(
        hub.prune, "recover_lock", Contended(threading.Lock(), second_arrived), raising=False
    )
    real_rebase = hub.repos.qemu_img.rebase
    running, most = [0], [0]
    count = threading.Lock()

    def traced(path: Path, backing: str, *args: object, **kwargs: object) -> None:
        with count:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if running[0] > 1:
            second_arrived.set()
        # The first rebase waits until the second recover is either blocked or here.
        assert second_arrived.wait(60)
        try:
            real_rebase(path, backing, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            with count:
                running[0] -= 1

    monkeypatch.setattr(hub.repos.qemu_img, "rebase", traced)
    errors: list[BaseException] = []

    def recover() -> None:
        try:
            hub.prune.recover()
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=recover)
    first.start()
    while not (running[0] or errors or not first.is_alive()):
        first.join(0.01)
    second = threading.Thread(target=recover)
    second.start()
    first.join(120)
    second.join(120)
    assert errors == []
    assert most[0] == 1
    assert merges(hub) == []
    assert same_as(image_of(hub, repo, points[2]), sources[points[2]], tmp_path)
    assert files(repo) == layer_files(hub)


def test_a_policy_run_prunes_every_vm_when_one_prune_meets_a_bug(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    points1, _ = make_points(hub, repo, "vm1", 2)
    points2, _ = make_points(hub, repo, "vm2", 2)
    policies = PolicyService(hub.db)
    policies.create("p", LAST_ONE, None, None)
    policies.assign("p", "vm", "vm1")
    policies.assign("p", "vm", "vm2")
    with hub.db.session() as s:
        # Each VM's last backup stands for the one the policy run starts.
        ended = {
            name: s.scalars(
                select(Job.id).join(Vm).where(Vm.name == name).order_by(Job.created_at.desc())
            ).first()
            for name in ("vm1", "vm2")
        }
        vm1 = s.scalars(select(Vm.id).where(Vm.name == "vm1")).one()
    monkeypatch.setattr(hub.backups, "submit", lambda vm, kind, **_: ended[vm])
    real_run = hub.prune.run

    def buggy_for_vm1(vm: str, rules: KeepRules) -> object:
        if vm in ("vm1", vm1):
            raise RuntimeError("a bug")
        return real_run(vm, rules)

    monkeypatch.setattr(hub.prune, "run", buggy_for_vm1)
    scheduler = Scheduler(
        hub.backups,
        policies,
        hub.prune,
        hub.connector,
        node_status=hub.node_status,
        zone=hub.settings.zone,
        node_timeout=0,
    )

    scheduler.run_policy(policies.get("p"))  # the policy thread's body

    with hub.db.session() as s:
        left = set(s.scalars(select(RestorePoint.id)))
        assert s.scalar(select(func.count()).select_from(Merge)) == 0
    assert left == {points1[0], points1[1], points2[1]}
