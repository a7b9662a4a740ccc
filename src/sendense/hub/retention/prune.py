"""Prune: apply retention rules to a VM's restore points and remove the rest without
breaking a chain.

A restore point's disk is a layer of a QCOW2 chain. Removing a layer that a kept
layer is built on first rebases that child onto the removed layer's parent with a
safe `qemu-img rebase` (it copies into the child every cluster whose content would
change, then switches the backing file in one header write), so the child reads the
same at every moment; only then is the layer's file deleted. Each step is a `merges`
row written before it starts; start-up (`recover`) rolls every unfinished step
forward, so a hub killed at any moment leaves every kept point restorable.

How one step is carried out and proven: merge_steps.py.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from sendense.common.errors import Conflict, NotFound, SendenseError
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
from sendense.hub.repository.repositories import RepositoryService
from sendense.hub.restore.instant_access import AccessService
from sendense.hub.retention.merge_steps import FAILED, REBASED, REBASING, MergeSteps
from sendense.hub.retention.rules import Candidate, Decision, KeepRules, select_points
from sendense.hub.tasks.task_log import TaskLogs
from sendense.hub.tasks.task_log_handler import task_context, write_line
from sendense.hub.tasks.vm_lock import lock_vm, unlock_vm
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
        logs: TaskLogs | None = None,
    ) -> None:
        self.db = db
        self.logs = logs
        self.repos = repos
        self.access = access
        self.zone = zone
        self.verifier = Verifier(db, repos, scratch)
        self.steps = MergeSteps(db, repos, self.verifier)
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
                    self.steps.advance(merge_id)
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
