"""A restore point copied to a target: each disk as a full or as an incremental
on the copy's previous layer of that disk, then the point's manifest.

A disk's layer goes up as an incremental when the local chain's parent of the
layer is a point the target holds and the copy's chain is shorter than the
target's `full_every`; else a *synthetic full* goes up: the point's disk read
through its local chain into one standalone QCOW2 on the hub (the VM is not read
again). Locked objects cannot be merged, so chains on a target stay this short.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, undefer

from sendense.common.errors import Conflict, InvalidInput
from sendense.hub.copy.bucket import CopyTargetError
from sendense.hub.copy.manifest import (
    DATA,
    DiskManifest,
    Layer,
    Manifest,
    VmManifest,
    encode_areas,
    new_name,
    write_manifest,
)
from sendense.hub.copy.targets import OpenTarget
from sendense.hub.copy.uploads import ObjectUpload, UploadCount, Uploaded, remove_file
from sendense.hub.db.database import Database
from sendense.hub.db.models import (
    CopyObject,
    CopyPoint,
    CopyUpload,
    PointStatus,
    RestorePoint,
    RestorePointDisk,
    Vm,
    utcnow,
)
from sendense.hub.repository.repositories import RepositoryService
from sendense.nbd.qemu_img import QemuImg

log = logging.getLogger(__name__)
STALE_UPLOAD = timedelta(days=1)


@dataclass
class CopyProgress:
    disks_done: int = 0
    disks_total: int = 0
    sent_parts: int = 0
    kept_parts: int = 0
    sent_bytes: int = 0
    fulls: int = 0
    incrementals: int = 0


@dataclass(frozen=True)
class LayerPlan:
    disk_key: int
    source: Path  # the file to upload
    kind: str
    parent: CopyObject | None
    synthetic: bool  # `source` is a scratch file made for this copy


def copyable(point: RestorePoint | None, point_id: str) -> RestorePoint:
    if point is None:
        raise InvalidInput(f"restore point {point_id} does not exist")
    if point.status != PointStatus.COMPLETE:
        raise Conflict(
            f"restore point {point_id} is {point.status.value}: only complete points are copied"
        )
    if point.verified_at is None:
        raise Conflict(
            f"restore point {point_id} is not verified yet: copies hold verified points only "
            f"(`sendense verify {point_id}`)"
        )
    return point


@dataclass
class Copier:
    db: Database
    repos: RepositoryService
    qemu_img: QemuImg
    scratch: Path

    def copy(
        self,
        target: OpenTarget,
        point_id: str,
        progress: CopyProgress,
        report: Callable[[], None] = lambda: None,
    ) -> str:
        """Uploads the point's disks and manifest; returns a note for the task."""
        with self.db.session() as s:
            if s.scalars(
                select(CopyPoint).where(
                    CopyPoint.target_id == target.info.id, CopyPoint.restore_point_id == point_id
                )
            ).first():
                return f"restore point {point_id} is on {target.info.name} already"
        self._abort_stale(target)
        plans = self._plan(target, point_id)
        progress.disks_total = len(plans)
        until = target.bucket.retain_until()
        disks: list[DiskManifest] = []
        for plan in plans:
            upload = ObjectUpload(
                self.db, target.bucket, target.key, (target.info.id, point_id, plan.disk_key), until
            )
            try:
                uploaded = upload.run(plan.source, new_name(DATA))
            finally:
                _add(progress, upload.count)
                report()
            if plan.synthetic:
                remove_file(plan.source)
            disks.append(self._record_layer(target, point_id, plan, uploaded, until))
            progress.disks_done += 1
            progress.fulls += plan.kind == "full"
            progress.incrementals += plan.kind == "incremental"
            report()
        manifest = self._manifest(point_id, disks)
        name, version = write_manifest(target.bucket, target.key, manifest)
        with self.db.session() as s:
            s.add(
                CopyPoint(
                    target_id=target.info.id,
                    restore_point_id=point_id,
                    vm_id=manifest.vm.id,
                    vm_name=manifest.vm.name,
                    point_created_at=manifest.created_at,
                    manifest_name=name,
                    manifest_version=version,
                    retain_until=until,
                )
            )
        log.info(
            "restore point %s copied to %s: %d full, %d incremental, %d parts sent, %d kept",
            point_id, target.info.name, progress.fulls, progress.incrementals,
            progress.sent_parts, progress.kept_parts,
        )  # fmt: skip
        return (
            f"{progress.fulls} full and {progress.incrementals} incremental disk layers; "
            f"{progress.sent_parts} parts sent, {progress.kept_parts} already in the bucket"
        )

    def _abort_stale(self, target: OpenTarget) -> None:
        """Multipart uploads a day old that no copy will resume (their parts cost
        storage and are invisible): aborted."""
        with self.db.session() as s:
            query = select(CopyUpload.upload_id).where(CopyUpload.target_id == target.info.id)
            ours = set(s.scalars(query))
        try:
            stale = target.bucket.stale_uploads(STALE_UPLOAD)
        except CopyTargetError as exc:
            log.warning("could not list the unfinished uploads of %s: %s", target.info.name, exc)
            return
        for name, upload_id in stale:
            if upload_id not in ours:
                log.info("aborting a stale upload of %s on %s", name, target.info.name)
                target.bucket.abort_upload(name, upload_id)

    def _plan(self, target: OpenTarget, point_id: str) -> list[LayerPlan]:
        # One session reads (a session holds SQLite's write lock: nothing else is
        # opened inside it); the files are made after.
        with self.db.session() as s:
            point = copyable(s.get(RestorePoint, point_id), point_id)
            repo_id = point.repository_id
            disks = [
                (d.disk_key, d.file_path, d.parent_id is None, self._copied_parent(s, target, d))
                for d in point.disks
            ]
        repo = self.repos.get(repo_id)
        plans: list[LayerPlan] = []
        for disk_key, file_path, is_full, parent in disks:
            source = self.repos.resolve(repo, file_path)
            if is_full:
                plans.append(LayerPlan(disk_key, source, "full", None, False))
            elif parent is not None:
                plans.append(LayerPlan(disk_key, source, "incremental", parent, False))
            else:
                plans.append(self._synthetic_full(target, point_id, disk_key, source))
        return plans

    def _copied_parent(
        self, s: Session, target: OpenTarget, disk: RestorePointDisk
    ) -> CopyObject | None:
        """The target's object of the local parent layer, when the copy's chain has
        room for one more incremental."""
        if disk.parent_id is None:
            return None
        parent_disk = s.get(RestorePointDisk, disk.parent_id)
        if parent_disk is None:
            return None
        parent = s.scalars(
            select(CopyObject).where(
                CopyObject.target_id == target.info.id,
                CopyObject.point_id == parent_disk.restore_point_id,
                CopyObject.disk_key == disk.disk_key,
            )
        ).first()
        length, walk = 0, parent
        while walk is not None:
            length += 1
            walk = s.get(CopyObject, walk.parent_id) if walk.parent_id else None
        if parent is None or length >= target.info.full_every:
            return None
        s.expunge(parent)
        return parent

    def _synthetic_full(
        self, target: OpenTarget, point_id: str, disk_key: int, layer: Path
    ) -> LayerPlan:
        folder = self.scratch / "copy"
        folder.mkdir(parents=True, exist_ok=True)
        made = folder / f"{target.info.id}-{point_id}-{disk_key}.qcow2"
        if not made.exists():  # else kept from an upload cut short: resumed as it is
            partial = made.with_suffix(".partial")
            self.qemu_img.convert(layer, partial, ["-O", "qcow2"])
            partial.rename(made)
        return LayerPlan(disk_key, made, "full", None, True)

    def _record_layer(
        self,
        target: OpenTarget,
        point_id: str,
        plan: LayerPlan,
        uploaded: Uploaded,
        until: datetime | None,
    ) -> DiskManifest:
        with self.db.session() as s:
            row = CopyObject(
                target_id=target.info.id,
                point_id=point_id,
                disk_key=plan.disk_key,
                name=uploaded.name,
                version_id=uploaded.version_id,
                kind=plan.kind,
                parent_id=plan.parent.id if plan.parent else None,
                plain_size=uploaded.plain_size,
                plain_sha256=uploaded.plain_sha256,
                sealed_size=uploaded.sealed_size,
                retain_until=until,
            )
            s.add(row)
            s.flush()
            chain: list[CopyObject] = []
            walk: CopyObject | None = row
            while walk is not None:
                chain.insert(0, walk)
                walk = s.get(CopyObject, walk.parent_id) if walk.parent_id else None
            disk = s.scalars(
                select(RestorePointDisk)
                .options(undefer(RestorePointDisk.areas))
                .where(
                    RestorePointDisk.restore_point_id == point_id,
                    RestorePointDisk.disk_key == plan.disk_key,
                )
            ).one()
            return DiskManifest(
                disk_key=disk.disk_key,
                virtual_size=disk.virtual_size,
                change_id=disk.change_id,
                checksum=disk.checksum,
                checksum_block=disk.checksum_block,
                areas=encode_areas(disk.areas),
                layers=[
                    Layer(
                        name=o.name,
                        version_id=o.version_id,
                        kind=o.kind,
                        point_id=o.point_id,
                        plain_size=o.plain_size,
                        plain_sha256=o.plain_sha256,
                        sealed_size=o.sealed_size,
                    )
                    for o in chain
                ],
            )

    def _manifest(self, point_id: str, disks: list[DiskManifest]) -> Manifest:
        with self.db.session() as s:
            point = s.get_one(RestorePoint, point_id)
            vm = s.get_one(Vm, point.vm_id)
            return Manifest(
                restore_point_id=point_id,
                vm=VmManifest(id=vm.id, name=vm.name, vmware_uuid=vm.vmware_uuid),
                created_at=point.created_at,
                completed_at=point.completed_at,
                layout=point.layout,
                copied_at=utcnow(),
                disks=disks,
            )


def _add(progress: CopyProgress, count: UploadCount) -> None:
    progress.sent_parts += count.sent_parts
    progress.kept_parts += count.kept_parts
    progress.sent_bytes += count.sent_bytes
