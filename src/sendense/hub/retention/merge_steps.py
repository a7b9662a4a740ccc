"""One recorded merge step of a prune (a `merges` row) carried to its end: the
child rebased onto the removed layer's parent and proven to read as before, then
the removed layer's file and rows deleted; a child that cannot be proven keeps the
removed layer and is marked invalid, with the step left for an operator.

A power loss can still cut a rebase short with the header switched and clusters
missing, so a step is proven, not assumed: the child's checksum through its old
chain is recorded before the rebase and must read the same through the new chain
(synced) before the old layer's file goes. The steps and what a crash at each
leaves: "Merge protocol" in docs/decisions.md.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from sqlalchemy import select
from sqlalchemy.orm import Session

from sendense.common.checksum import merge_areas, pack_areas, unpack_areas
from sendense.common.errors import InsufficientSpace, MergeUnproven
from sendense.hub.db.database import Database
from sendense.hub.db.models import Merge, PointStatus, RestorePoint, RestorePointDisk
from sendense.hub.repository.repositories import (
    RepositoryInfo,
    RepositoryService,
    capacity_of,
    sync_file,
)
from sendense.hub.verify.verifier import Verifier

log = logging.getLogger(__name__)
Area = tuple[int, int]
# Merge states (docs/decisions.md, "Merge protocol").
REBASING, REBASED, FAILED = "rebasing", "rebased", "failed"
# The proof's block size for layers that recorded no areas (read whole).
WHOLE_DISK_BLOCK = 4 << 20


class MergeSteps:
    """Carries out the merge steps `PruneService` records and rolls forward."""

    def __init__(self, db: Database, repos: RepositoryService, verifier: Verifier) -> None:
        self.db = db
        self.repos = repos
        self.verifier = verifier

    def advance(self, merge_id: str) -> None:
        """Carry one recorded step to its end from the state its row is in; a step
        whose child could not be proven (`failed`) is left alone."""
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
    """A merge row as read at the start of `advance`."""

    id: str
    state: str
    doomed_id: str
    child_id: str | None
    new_parent_id: str | None
    child: tuple[str, str] | None
    doomed: tuple[str, str] | None
    new_parent: tuple[str, str] | None
    expected: tuple[str, list[Area], int] | None  # checksum, areas, block
