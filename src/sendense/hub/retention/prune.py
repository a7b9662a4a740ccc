"""Prune: apply retention rules to a VM's restore points and remove the rest without
breaking a chain.

A restore point's disk is a layer of a QCOW2 chain. Removing a layer that a kept
layer is built on first rebases that child onto the removed layer's parent with a
safe `qemu-img rebase` (it copies into the child every cluster whose content would
change, then switches the backing file in one header write), so the child reads the
same at every moment; only then is the layer's file deleted. Each step is a `merges`
row written before it starts; start-up (`recover`) rolls every unfinished step
forward, so a hub killed at any moment leaves every kept point restorable.

A power loss can still cut a rebase short with the header switched and clusters
missing, so a step is proven, not assumed: the child's checksum through its old
chain is recorded before the rebase and must read the same through the new chain
(synced) before the old layer's file goes. The steps and what a crash at each
leaves: "Merge protocol" in docs/decisions.md.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import NoReturn

from sqlalchemy import select
from sqlalchemy.orm import Session

from sendense.common.checksum import merge_areas, pack_areas, unpack_areas
from sendense.common.errors import (
    Conflict,
    InsufficientSpace,
    MergeUnproven,
    NotFound,
    SendenseError,
)
from sendense.hub.db.database import Database
from sendense.hub.db.models import (
    Job,
    JobState,
    Merge,
    PointStatus,
    RestorePoint,
    RestorePointDisk,
    TaskKind,
    Vm,
    utcnow,
)
from sendense.hub.db.vms import find_vm
from sendense.hub.repository.repositories import (
    RepositoryInfo,
    RepositoryService,
    capacity_of,
    sync_file,
)
from sendense.hub.restore.instant_access import AccessService
from sendense.hub.retention.rules import Candidate, Decision, KeepRules, select_points
from sendense.hub.tasks.task_log import TaskLogs
from sendense.hub.tasks.task_log_handler import task_context, write_line
from sendense.hub.tasks.vm_lock import lock_vm, unlock_vm
from sendense.hub.verify.verifier import Verifier

log = logging.getLogger(__name__)
Area = tuple[int, int]
# Merge states (docs/decisions.md, "Merge protocol").
REBASING, REBASED, FAILED = "rebasing", "rebased", "failed"
# The proof's block size for layers that recorded no areas (read whole).
WHOLE_DISK_BLOCK = 4 << 20


@dataclass(frozen=True)
class PruneResult:
    job_id: str
    decisions: list[Decision]
    removed: list[str]


class PruneService:
    def __init__(
        self,
        db: Database,
        repos: RepositoryService,
        access: AccessService,
        zone: tzinfo,
        scratch: Path,
        logs: TaskLogs | None = None,
    ) -> None:
        self.db = db
        self.logs = logs
        self.repos = repos
        self.access = access
        self.zone = zone
        self.verifier = Verifier(db, repos, scratch)
        # One recover at a time in this hub; the VM lock already serialises prunes
        # of one VM, but every prune rolls forward every VM's steps.
        self.recover_lock: AbstractContextManager[object] = threading.Lock()

    def _vm(self, ref: str) -> Vm:
        with self.db.session() as s:
            vm = find_vm(s, ref)
            if vm is None:
                raise NotFound(f"VM {ref!r} is not known to the hub")
            s.expunge(vm)
            return vm

    def plan(self, vm_ref: str, rules: KeepRules) -> list[Decision]:
        """Keep or remove, with the reason, for each finished restore point, newest first."""
        vm = self._vm(vm_ref)
        accessed = {a.restore_point_id for a in self.access.all()}  # its own session
        with self.db.session() as s:
            points = s.scalars(
                select(RestorePoint).where(
                    RestorePoint.vm_id == vm.id, RestorePoint.status != PointStatus.INCOMPLETE
                )
            ).all()
            candidates = [
                Candidate(p.id, p.completed_at or p.created_at, p.protected) for p in points
            ]
            # Points running tasks read (a download, a file-browsing session).
            reading = s.scalars(
                select(Job.restore_point_id).where(
                    Job.state == JobState.RUNNING, Job.restore_point_id.is_not(None)
                )
            )
            pinned = self._in_use(s, vm.id, accessed | {p for p in reading if p})
            complete = [p for p in points if p.status == PointStatus.COMPLETE]
            if complete:
                newest = max(complete, key=lambda p: p.completed_at or p.created_at)
                pinned.setdefault(newest.id, "newest")
        return select_points(candidates, rules, self.zone, pinned)

    @staticmethod
    def _in_use(s: Session, vm_id: str, used_points: set[str]) -> dict[str, str]:
        """Points an access (instant export, restore) or a running task reads, and every point whose
        layers those are built on: their files must not change."""
        pinned: dict[str, str] = {}
        todo = list(
            s.scalars(
                select(RestorePointDisk).where(RestorePointDisk.restore_point_id.in_(used_points))
            )
        )
        while todo:
            layer = todo.pop()
            point = layer.restore_point
            if point.vm_id == vm_id:
                pinned[point.id] = "in use"
            if layer.parent_id:
                parent = s.get(RestorePointDisk, layer.parent_id)
                if parent is not None:
                    todo.append(parent)
        return pinned

    def run(self, vm_ref: str, rules: KeepRules) -> PruneResult:
        vm = self._vm(vm_ref)
        with self.db.session() as s:
            job = Job(vm_id=vm.id, kind=TaskKind.PRUNE, state=JobState.RUNNING, started_at=utcnow())
            s.add(job)
            s.flush()
            job_id = job.id
            # Busy: VmBusy rolls the new row back with the transaction.
            lock_vm(s, s.get_one(Vm, vm.id), job_id)
        with task_context(self.logs, job_id):
            return self._run(vm, vm_ref, rules, job_id)

    def _run(self, vm: Vm, vm_ref: str, rules: KeepRules, job_id: str) -> PruneResult:
        removed: list[str] = []
        self._line(job_id, "INFO", f"prune started vm={vm.name}")
        try:
            # Steps an earlier prune left (a crash, no space, a share not mounted)
            # are finished before anything is planned.
            _done, earlier = self._roll_forward()
            decisions = self.plan(vm_ref, rules)
            # Newest first: a removed layer's data moves into its child once, not
            # again with every older layer removed after it.
            doomed = sorted((d for d in decisions if not d.keep), key=lambda d: d.at, reverse=True)
            for decision in doomed:
                self._remove_point(job_id, decision.id, earlier)
                removed.append(decision.id)
        except BaseException as exc:
            error = exc.message if isinstance(exc, SendenseError) else repr(exc)
            self._end(job_id, error)
            self._line(job_id, "ERROR", f"prune failed: {error}")
            raise
        self._end(job_id, None)
        log.info("prune done job=%s vm=%s removed=%d", job_id, vm.name, len(removed))
        self._line(job_id, "INFO", "prune complete")
        return PruneResult(job_id, decisions, removed)

    def _line(self, job_id: str, level: str, message: str) -> None:
        if self.logs is not None:
            write_line(self.logs, job_id, level, message)

    def _end(self, job_id: str, error: str | None) -> None:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.state = JobState.FAILED if error else JobState.COMPLETE
                job.error, job.finished_at = error, utcnow()
            unlock_vm(s, job_id)

    def _remove_point(self, job_id: str, point_id: str, earlier: dict[str, Exception]) -> None:
        """Record a merge step for every layer of the point in one transaction, then
        carry them out. A point with an unfinished step of an earlier prune is not
        planned again: that step's error is raised (`earlier`: those of this run's
        first roll-forward)."""
        with self.db.session() as s:
            unfinished = [
                (m.id, m.error)
                for m in s.scalars(
                    select(Merge).where(
                        Merge.doomed_id.in_(
                            select(RestorePointDisk.id).where(
                                RestorePointDisk.restore_point_id == point_id
                            )
                        )
                    )
                )
            ]
        for merge_id, error in unfinished:
            if merge_id in earlier:
                raise earlier[merge_id]
            raise Conflict(f"restore point {point_id} has an unfinished merge step: {error}")
        self._check_before_merging(point_id)
        with self.db.session() as s:
            layers = s.scalars(
                select(RestorePointDisk).where(RestorePointDisk.restore_point_id == point_id)
            ).all()
            for layer in layers:
                children = s.scalars(
                    select(RestorePointDisk).where(RestorePointDisk.parent_id == layer.id)
                ).all()
                for child in children:
                    s.add(
                        Merge(
                            job_id=job_id,
                            doomed_id=layer.id,
                            child_id=child.id,
                            new_parent_id=layer.parent_id,
                            state=REBASING,
                        )
                    )
                if not children:
                    s.add(Merge(job_id=job_id, doomed_id=layer.id, state=REBASED))
            point = s.get(RestorePoint, point_id)
            if point is not None and not layers:
                s.delete(point)
        _done, failed = self._roll_forward()
        with self.db.session() as s:
            left = [(m.id, m.error) for m in s.scalars(select(Merge).where(Merge.job_id == job_id))]
        for merge_id, _error in left:
            if merge_id in failed:
                raise failed[merge_id]
        if left:
            raise Conflict(f"restore point {point_id} is not removed: {left[0][1]}")

    def _check_before_merging(self, point_id: str) -> None:
        """A layer's data moves into its child only when both still hash as they did
        at backup: the child's new checksum (`_rehash`) must not vouch for bad data."""
        with self.db.session() as s:
            doomed = list(
                s.scalars(
                    select(RestorePointDisk.id).where(RestorePointDisk.restore_point_id == point_id)
                )
            )
            children = list(
                s.scalars(select(RestorePointDisk.id).where(RestorePointDisk.parent_id.in_(doomed)))
            )
        if not children:
            return
        errors = {k: v for k, v in self.verifier.layer_errors(doomed + children).items() if v}
        if errors:
            raise Conflict(
                f"restore point {point_id} is not merged: {'; '.join(errors.values())} "
                "(see sendense verify)"
            )

    # -- merge steps ---------------------------------------------------------------

    def recover(self) -> int:
        """Carry every recorded merge step to its end; returns how many were finished.

        Each step is handled alone: one that fails (no space, its repository not
        mounted, a qemu-img error) is logged and keeps its row with the error, to be
        tried again at the next start or prune; the others go on. A step whose child
        could not be proven (`failed`) is left alone. One recover runs at a time in
        this hub: scheduled and API prunes and start-up all call it."""
        return len(self._roll_forward()[0])

    def _roll_forward(self) -> tuple[list[str], dict[str, Exception]]:
        with self.recover_lock:
            with self.db.session() as s:
                ids = list(
                    s.scalars(
                        select(Merge.id)
                        .join(Job, Job.id == Merge.job_id)
                        .where(Merge.state != FAILED, self.db.owned())
                        .order_by(Merge.created_at, Merge.id)
                    )
                )
            done: list[str] = []
            failed: dict[str, Exception] = {}
            for merge_id in ids:
                try:
                    self._advance(merge_id)
                except Exception as exc:  # one step's failure never stops the others
                    failed[merge_id] = exc
                    self._note_failure(merge_id, exc)
                else:
                    done.append(merge_id)
            return done, failed

    def _note_failure(self, merge_id: str, exc: Exception) -> None:
        message = exc.message if isinstance(exc, SendenseError) else repr(exc)
        with self.db.session() as s:
            row = s.get(Merge, merge_id)
            if row is not None and row.state != FAILED:
                row.error = message
        if isinstance(exc, SendenseError):
            log.error("merge step %s not finished (kept, tried again later): %s", merge_id, message)
        else:
            log.exception("merge step %s not finished (kept, tried again later)", merge_id)

    def _advance(self, merge_id: str) -> None:
        with self.db.session() as s:
            merge = s.get(Merge, merge_id)
            if merge is None or merge.state == FAILED:
                return
            step = _Step(
                merge.id,
                merge.state,
                merge.doomed_id,
                merge.child_id,
                merge.new_parent_id,
                self._file(s, merge.child_id),
                self._file(s, merge.doomed_id),
                self._file(s, merge.new_parent_id),
                None
                if merge.expected_checksum is None
                or merge.expected_areas is None
                or merge.expected_block is None
                else (
                    merge.expected_checksum,
                    unpack_areas(merge.expected_areas),
                    merge.expected_block,
                ),
            )
        if step.state == REBASING and step.child is not None and step.child_id is not None:
            self._rebase_child(step, step.child, step.child_id)
        with self.db.session() as s:
            pending = s.scalars(
                select(Merge.id).where(
                    Merge.doomed_id == step.doomed_id, Merge.state.in_((REBASING, FAILED))
                )
            ).first()
        if pending is not None:
            return  # another child of the same layer still reads through it
        if step.doomed is not None:
            repo_id, relative = step.doomed
            self.repos.remove_image(self.repos.get(repo_id), relative)
        with self.db.session() as s:
            layer = s.get(RestorePointDisk, step.doomed_id)
            point_id = layer.restore_point_id if layer is not None else None
            if layer is not None:
                s.delete(layer)
                s.flush()
            for row in s.scalars(select(Merge).where(Merge.doomed_id == step.doomed_id)):
                s.delete(row)
            if point_id is not None:
                point = s.get(RestorePoint, point_id)
                if point is not None and not point.disks:
                    s.delete(point)
                    log.info("restore point removed id=%s", point_id)

    def _image(self, file: tuple[str, str]) -> Path:
        """A layer's file; refuses a repository that is not mounted."""
        return self.repos.resolve(self.repos.get(file[0]), file[1])

    def _rebase_child(self, step: _Step, child: tuple[str, str], child_id: str) -> None:
        """Rebase the child onto the new parent and prove it reads as before (see
        "Merge protocol" in docs/decisions.md)."""
        repo = self.repos.get(child[0])
        path = self.repos.resolve(repo, child[1])
        if step.doomed is None:
            self._give_up(step, child_id, "has lost the row of the layer it removes")
        doomed = self._image(step.doomed)
        old = os.path.relpath(doomed, path.parent)
        new = (
            ""
            if step.new_parent is None
            else os.path.relpath(self._image(step.new_parent), path.parent)
        )
        header = self._backing(path)
        expected = step.expected
        if expected is None:
            if header != old:
                self._give_up(
                    step,
                    child_id,
                    "was interrupted after its rebase began, with no checksum to prove it",
                )
            areas, block = self._areas_to_prove(child_id, step.doomed_id)
            checksum = self._reads(path, areas, block)  # through the old chain
            with self.db.session() as s:
                record = s.get_one(Merge, step.id)
                record.expected_checksum, record.expected_block = checksum, block
                record.expected_areas = pack_areas(areas)
            expected = (checksum, areas, block)
        checksum, areas, block = expected
        if header == old:
            self._rebase(repo, path, new, doomed)
        elif header != new:
            self._give_up(step, child_id, f"found its child naming {header!r}")
        if self._reads(path, areas, block) != checksum:
            # A rebase cut short (power loss) can leave the header switched without
            # the clusters it had to copy. The old chain still holds them: go back
            # to it, prove it, and rebase again.
            log.warning(
                "merge step %s: %s does not read as before its rebase; rebasing it again",
                step.id,
                path.name,
            )
            self.repos.qemu_img.rebase(path, old, unsafe=True)
            if self._reads(path, areas, block) != checksum:
                self._give_up(
                    step, child_id, "cannot prove its child: neither chain reads as before"
                )
            self._rebase(repo, path, new, doomed)
            if self._reads(path, areas, block) != checksum:
                self.repos.qemu_img.rebase(path, old, unsafe=True)
                sync_file(path)
                self._give_up(step, child_id, "rebased a child that does not read as before")
        with self.db.session() as s:
            row = s.get(RestorePointDisk, child_id)
            if row is not None:
                row.parent_id = step.new_parent_id
                if self._union(s, child_id, step.doomed_id) is not None:
                    # The child now also holds what the removed layer read.
                    row.areas, row.checksum, row.checksum_block = pack_areas(areas), checksum, block
            merge = s.get_one(Merge, step.id)
            merge.state, merge.error = REBASED, None

    @staticmethod
    def _union(s: Session, child_id: str, doomed_id: str) -> tuple[list[Area], int] | None:
        """Both layers' recorded areas, when they were hashed with one block size."""
        child = s.get(RestorePointDisk, child_id)
        doomed = s.get(RestorePointDisk, doomed_id)
        if child is None or doomed is None or child.areas is None or doomed.areas is None:
            return None
        if not child.checksum_block or child.checksum_block != doomed.checksum_block:
            return None
        return merge_areas(
            unpack_areas(doomed.areas) + unpack_areas(child.areas)
        ), child.checksum_block

    def _areas_to_prove(self, child_id: str, doomed_id: str) -> tuple[list[Area], int]:
        """What the proof reads: both layers' areas, else (layers from before areas
        were recorded) the whole disk."""
        with self.db.session() as s:
            union = self._union(s, child_id, doomed_id)
            if union is not None:
                return union
            child = s.get_one(RestorePointDisk, child_id)
            return [(0, child.virtual_size)], WHOLE_DISK_BLOCK

    def _backing(self, path: Path) -> str:
        backing: str = self.repos.qemu_img.info(path).get("backing-filename") or ""
        return backing

    def _reads(self, path: Path, areas: list[Area], block: int) -> str:
        """The checksum of `areas` as the image reads them, after syncing it: what is
        compared is what a power loss would leave."""
        sync_file(path)
        return self.verifier.rehash(path, areas, block)

    def _rebase(self, repo: RepositoryInfo, path: Path, backing: str, doomed: Path) -> None:
        """Safe rebase of `path` onto `backing`, refused when the repository cannot
        take what it copies: everything the child reads (`qemu-img measure`) when it
        becomes standalone, at most the removed layer's file otherwise."""
        if backing:
            needed = doomed.stat().st_blocks * 512
        else:
            needed = self.repos.qemu_img.measure(path) - path.stat().st_blocks * 512
        free = capacity_of(repo.path).free
        if needed > free:
            raise InsufficientSpace(
                f"repository {repo.name} has {free} bytes free; merging into {path.name} "
                f"needs up to {needed}"
            )
        log.info("rebasing %s onto %s", path.name, backing or "nothing")
        self.repos.qemu_img.rebase(path, backing)
        sync_file(path)

    def _give_up(self, step: _Step, child_id: str, reason: str) -> NoReturn:
        """The child is not proven: keep the removed layer, mark the child (and what
        is built on it) invalid, and leave the step for an operator."""
        message = (
            f"merge of layer {step.doomed_id} into {child_id} {reason}; "
            "the removed layer is kept and the child marked invalid"
        )
        with self.db.session() as s:
            merge = s.get_one(Merge, step.id)
            merge.state, merge.error = FAILED, message
            frontier = [child_id]
            while frontier:
                layer = s.get(RestorePointDisk, frontier.pop())
                if layer is None:
                    continue
                layer.status = PointStatus.INVALID
                layer.verify_error = (
                    message
                    if layer.id == child_id
                    else (f"its parent layer {layer.parent_id} is invalid")
                )
                point = layer.restore_point
                point.status = PointStatus.INVALID
                point.verify_error = f"disk {layer.disk_key}: {layer.verify_error}"
                frontier += s.scalars(
                    select(RestorePointDisk.id).where(RestorePointDisk.parent_id == layer.id)
                )
        log.error("%s", message)
        raise MergeUnproven(step.id, child_id, message)

    @staticmethod
    def _file(s: Session, layer_id: str | None) -> tuple[str, str] | None:
        if layer_id is None:
            return None
        layer = s.get(RestorePointDisk, layer_id)
        if layer is None:
            return None
        return layer.restore_point.repository_id, layer.file_path


@dataclass(frozen=True)
class _Step:
    """A merge row as read at the start of `_advance`."""

    id: str
    state: str
    doomed_id: str
    child_id: str | None
    new_parent_id: str | None
    child: tuple[str, str] | None
    doomed: tuple[str, str] | None
    new_parent: tuple[str, str] | None
    expected: tuple[str, list[Area], int] | None  # checksum, areas, block
