"""Retention on a copy target, by its own keep-* rules: whole chains go once none
of their points is kept and every object's lock has run out (a locked version is
never asked to go); the locks of what is kept are extended, so a point that ages
into a longer keep rule stays locked while it is kept.

A chain is a full object and the incrementals on it; a point needs the objects
from its disks' fulls up to its own layers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta, tzinfo

from sqlalchemy import delete, select

from sendense.hub.copy.targets import OpenTarget
from sendense.hub.db.database import Database
from sendense.hub.db.models import CopyObject, CopyPoint, utcnow
from sendense.hub.retention.rules import Candidate, KeepRules, select_points

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyPruneResult:
    kept: int
    removed: int
    waiting: int  # chains no longer kept whose locks have not run out yet
    extended: int  # objects whose lock was extended


class CopyRetention:
    def __init__(self, db: Database, zone: tzinfo) -> None:
        self.db = db
        self.zone = zone

    def run(self, target: OpenTarget, keep: KeepRules | None) -> CopyPruneResult:
        now = utcnow()
        with self.db.session() as s:
            points = s.scalars(select(CopyPoint).where(CopyPoint.target_id == target.info.id)).all()
            objects = {
                o.id: o
                for o in s.scalars(select(CopyObject).where(CopyObject.target_id == target.info.id))
            }
            s.expunge_all()
        kept_points: set[str] = set()
        by_vm: dict[str, list[CopyPoint]] = {}
        for p in points:
            by_vm.setdefault(p.vm_id or p.vm_name, []).append(p)
        for group in by_vm.values():
            candidates = [Candidate(p.restore_point_id, p.point_created_at) for p in group]
            if keep is None or keep.empty:
                kept_points.update(c.id for c in candidates)
                continue
            newest = max(candidates, key=lambda c: (c.at, c.id))
            decisions = select_points(candidates, keep, self.zone, {newest.id: "newest"})
            kept_points.update(d.id for d in decisions if d.keep)

        def root(o: CopyObject) -> str:
            while o.parent_id is not None and o.parent_id in objects:
                o = objects[o.parent_id]
            return o.id

        needed: set[str] = set()  # objects a kept point reads
        for o in objects.values():
            if o.point_id in kept_points:
                walk: CopyObject | None = o
                while walk is not None:
                    needed.add(walk.id)
                    walk = objects.get(walk.parent_id) if walk.parent_id else None
        by_root: dict[str, list[CopyObject]] = {}
        for o in objects.values():
            by_root.setdefault(root(o), []).append(o)
        # The disks of the same points make one chain each: together they go.
        chains: dict[frozenset[str], list[CopyObject]] = {}
        for chain in by_root.values():
            chains.setdefault(frozenset(o.point_id for o in chain), []).extend(chain)
        removed = waiting = 0
        for chain_points, chain in chains.items():
            if any(o.id in needed for o in chain):
                continue
            manifests = [p for p in points if p.restore_point_id in chain_points]
            locks = [o.retain_until for o in chain] + [p.retain_until for p in manifests]
            if any(until is not None and until > now for until in locks):
                waiting += 1
                continue
            for o in chain:
                target.bucket.delete_version(o.name, o.version_id)
            for p in manifests:
                target.bucket.delete_version(p.manifest_name, p.manifest_version)
            with self.db.session() as s:
                s.execute(delete(CopyObject).where(CopyObject.id.in_([o.id for o in chain])))
                s.execute(delete(CopyPoint).where(CopyPoint.id.in_([p.id for p in manifests])))
            removed += len(manifests)
            log.info(
                "copy target %s: a chain of %d points removed by retention",
                target.info.name, len(manifests),
            )  # fmt: skip
        extended = self._extend(target, [objects[i] for i in needed], points, kept_points)
        return CopyPruneResult(len(kept_points), removed, waiting, extended)

    def _extend(
        self,
        target: OpenTarget,
        needed: list[CopyObject],
        points: Sequence[CopyPoint],
        kept: set[str],
    ) -> int:
        """Objects and manifests of kept points locked at least `lock_days` from now
        (renewed once half of that has passed)."""
        if target.info.lock_mode == "none":
            return 0
        now = utcnow()
        until = now + timedelta(days=target.info.lock_days)
        renew = now + timedelta(days=target.info.lock_days / 2)
        extended = 0
        for o in needed:
            if o.retain_until is None or o.retain_until < renew:
                target.bucket.extend_lock(o.name, o.version_id, until)
                with self.db.session() as s:
                    s.get_one(CopyObject, o.id).retain_until = until
                extended += 1
        for p in points:
            if p.restore_point_id in kept and (p.retain_until is None or p.retain_until < renew):
                target.bucket.extend_lock(p.manifest_name, p.manifest_version, until)
                with self.db.session() as s:
                    s.get_one(CopyPoint, p.id).retain_until = until
        return extended
