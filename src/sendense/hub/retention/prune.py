"""Prune: apply retention rules to a VM's restore points and remove the rest without
breaking a chain.

A restore point's disk is a layer of a QCOW2 chain. Removing a layer that a kept
layer is built on first rebases that child onto the removed layer's parent with a
safe `qemu-img rebase` (it copies into the child every cluster whose content would
change, then switches the backing file in one header write), so the child reads the
same at every moment; only then is the layer's file deleted. Each step is a `merges`
row written before it starts; start-up (`recover`) rolls every unfinished step
forward, so a hub killed at any moment leaves every kept point restorable.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from sendense.common.checksum import merge_areas, pack_areas, unpack_areas
from sendense.common.errors import Conflict, NotFound, SendenseError, VmBusy
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
from sendense.hub.repository.repositories import RepositoryService
from sendense.hub.restore.instant_access import AccessService
from sendense.hub.retention.rules import Candidate, Decision, KeepRules, select_points
from sendense.hub.verify.verifier import Verifier

log = logging.getLogger(__name__)


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
    ) -> None:
        self.db = db
        self.repos = repos
        self.access = access
        self.zone = zone
        self.verifier = Verifier(db, repos, scratch)

    def _vm(self, ref: str) -> Vm:
        with self.db.session() as s:
            vm = s.scalars(select(Vm).where(or_(Vm.name == ref, Vm.id == ref))).first()
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
            pinned = self._in_use(s, vm.id, accessed)
            complete = [p for p in points if p.status == PointStatus.COMPLETE]
            if complete:
                newest = max(complete, key=lambda p: p.completed_at or p.created_at)
                pinned.setdefault(newest.id, "newest")
        return select_points(candidates, rules, self.zone, pinned)

    @staticmethod
    def _in_use(s: Session, vm_id: str, used_points: set[str]) -> dict[str, str]:
        """Points an access (instant export, restore) reads, and every point whose
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
            locked = s.execute(
                update(Vm)
                .where(Vm.id == vm.id, Vm.active_job_id.is_(None))
                .values(active_job_id=job_id)
            )
            if getattr(locked, "rowcount", 0) != 1:
                job.state, job.error = JobState.FAILED, "the VM has a job running"
                job.finished_at = utcnow()
                busy = s.get(Vm, vm.id)
                running = busy.active_job_id if busy else None
                raise VmBusy(vm.name, running, f"VM {vm.name!r} has a job running: {running}")
        removed: list[str] = []
        try:
            decisions = self.plan(vm_ref, rules)
            # Newest first: a removed layer's data moves into its child once, not
            # again with every older layer removed after it.
            doomed = sorted((d for d in decisions if not d.keep), key=lambda d: d.at, reverse=True)
            for decision in doomed:
                self._remove_point(job_id, decision.id)
                removed.append(decision.id)
        except BaseException as exc:
            self._end(job_id, exc.message if isinstance(exc, SendenseError) else repr(exc))
            raise
        self._end(job_id, None)
        log.info("prune done job=%s vm=%s removed=%d", job_id, vm.name, len(removed))
        return PruneResult(job_id, decisions, removed)

    def _end(self, job_id: str, error: str | None) -> None:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.state = JobState.FAILED if error else JobState.COMPLETE
                job.error, job.finished_at = error, utcnow()
            s.execute(update(Vm).where(Vm.active_job_id == job_id).values(active_job_id=None))

    def _remove_point(self, job_id: str, point_id: str) -> None:
        """Record a merge step for every layer of the point in one transaction, then
        carry them out."""
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
                            state="rebasing",
                        )
                    )
                if not children:
                    s.add(Merge(job_id=job_id, doomed_id=layer.id, state="rebased"))
            point = s.get(RestorePoint, point_id)
            if point is not None and not layers:
                s.delete(point)
        self.recover()

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

    def _rehash(self, child_id: str, doomed_id: str) -> tuple[bytes, str, int] | None:
        """The child, rebased, now also holds what the removed layer read: its
        checksum covers both layers' areas, as the child reads them now."""
        with self.db.session() as s:
            child = s.get(RestorePointDisk, child_id)
            doomed = s.get(RestorePointDisk, doomed_id)
            if child is None or doomed is None:
                return None
            if child.areas is None or doomed.areas is None or not child.checksum_block:
                return None
            if child.checksum_block != doomed.checksum_block:
                return None
            block = child.checksum_block
            areas = merge_areas(unpack_areas(doomed.areas) + unpack_areas(child.areas))
            repo_id, relative = child.restore_point.repository_id, child.file_path
        image = self.repos.resolve(self.repos.get(repo_id, check_mounted=False), relative)
        return pack_areas(areas), self.verifier.rehash(image, areas, block), block

    def recover(self) -> int:
        """Carry every recorded merge step to its end; returns how many were finished."""
        with self.db.session() as s:
            ids = list(
                s.scalars(
                    select(Merge.id)
                    .join(Job, Job.id == Merge.job_id)
                    .where(self.db.owned())
                    .order_by(Merge.created_at, Merge.id)
                )
            )
        for merge_id in ids:
            self._advance(merge_id)
        return len(ids)

    @staticmethod
    def _file(s: Session, layer_id: str | None) -> tuple[str, str] | None:
        if layer_id is None:
            return None
        layer = s.get(RestorePointDisk, layer_id)
        if layer is None:
            return None
        return layer.restore_point.repository_id, layer.file_path

    def _advance(self, merge_id: str) -> None:
        with self.db.session() as s:
            merge = s.get(Merge, merge_id)
            if merge is None:
                return
            state, doomed_id = merge.state, merge.doomed_id
            child_id, new_parent_id = merge.child_id, merge.new_parent_id
            child = self._file(s, merge.child_id)
            new_parent = self._file(s, merge.new_parent_id)
            doomed = self._file(s, doomed_id)
        if state == "rebasing" and child is not None and child_id is not None:
            self._rebase(child, new_parent)
            rehashed = self._rehash(child_id, doomed_id)
            with self.db.session() as s:
                row = s.get(RestorePointDisk, child_id)
                if row is not None:
                    row.parent_id = new_parent_id
                    if rehashed is not None:
                        row.areas, row.checksum, row.checksum_block = rehashed
                s.get_one(Merge, merge_id).state = "rebased"
        with self.db.session() as s:
            pending = s.scalars(
                select(Merge.id).where(Merge.doomed_id == doomed_id, Merge.state == "rebasing")
            ).first()
        if pending is not None:
            return  # another child of the same layer still reads through it
        if doomed is not None:
            repo_id, relative = doomed
            self.repos.remove_image(self.repos.get(repo_id, check_mounted=False), relative)
        with self.db.session() as s:
            layer = s.get(RestorePointDisk, doomed_id)
            point_id = layer.restore_point_id if layer is not None else None
            if layer is not None:
                s.delete(layer)
                s.flush()
            for step in s.scalars(select(Merge).where(Merge.doomed_id == doomed_id)):
                s.delete(step)
            if point_id is not None:
                point = s.get(RestorePoint, point_id)
                if point is not None and not point.disks:
                    s.delete(point)
                    log.info("restore point removed id=%s", point_id)

    def _rebase(self, child: tuple[str, str], new_parent: tuple[str, str] | None) -> None:
        repo = self.repos.get(child[0], check_mounted=False)
        path = self.repos.resolve(repo, child[1])
        backing = ""
        if new_parent is not None:
            parent = self.repos.resolve(
                self.repos.get(new_parent[0], check_mounted=False), new_parent[1]
            )
            backing = os.path.relpath(parent, path.parent)
        info = self.repos.qemu_img.info(path)
        current = info.get("backing-filename") or ""
        if current == backing:
            return  # done before a crash: the header already names the new parent
        log.info("rebasing %s from %s onto %s", path.name, current, backing or "nothing")
        self.repos.qemu_img.rebase(path, backing)
