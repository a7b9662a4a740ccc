"""Copied points back from a target: the catalogue of a bucket imported (a hub
rebuilt from its copies), a point fetched into a repository (every restore path
then works on it as on any point), and a copy verified (every object read back,
opened and checked against its manifest).

A fetched point is one standalone QCOW2 per disk: its chain of objects is
downloaded into the hub's scratch directory, checked, and read through into the
repository; the downloaded layers are removed."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from sendense.common.errors import Conflict, NotFound, SendenseError
from sendense.hub.copy.manifest import POINTS, Layer, Manifest, read_manifest
from sendense.hub.copy.sealing import SealBroken, open_frames
from sendense.hub.copy.targets import OpenTarget
from sendense.hub.db.database import Database
from sendense.hub.db.models import (
    CopyPoint,
    PointStatus,
    RestorePoint,
    RestorePointDisk,
    Vm,
    new_id,
    utcnow,
)
from sendense.hub.repository.repositories import RepositoryService, sync_file
from sendense.nbd.qemu_img import QemuImg

log = logging.getLogger(__name__)


@dataclass
class FetchProgress:
    objects_done: int = 0
    objects_total: int = 0
    bytes_done: int = 0


class ObjectChanged(SealBroken):
    """An object's bytes are not the ones its manifest names."""


def download_layer(
    target: OpenTarget, layer: Layer, into: Path | None, progress: FetchProgress
) -> None:
    """The layer's plaintext into `into` (or nowhere), checked against the manifest."""
    digest = hashlib.sha256()
    size = 0
    with into.open("wb") if into is not None else contextlib.nullcontext() as out:
        chunks = target.bucket.read(layer.name, layer.version_id or None)
        for plain in open_frames(target.key, layer.name, chunks):
            if out is not None:
                out.write(plain)
            digest.update(plain)
            size += len(plain)
            progress.bytes_done += len(plain)
    if size != layer.plain_size or digest.hexdigest() != layer.plain_sha256:
        raise ObjectChanged(
            f"object {layer.name} (version {layer.version_id or '-'}) does not match its "
            "manifest: its checksum differs"
        )


def _ensure_vm(s: Session, manifest: Manifest) -> None:
    """The manifest's VM in this hub's catalogue (by its id), if it is not there."""
    if s.get(Vm, manifest.vm.id) is None:
        s.add(Vm(id=manifest.vm.id, name=manifest.vm.name, vmware_uuid=manifest.vm.vmware_uuid))
        s.flush()


@dataclass
class CopyCatalogue:
    db: Database
    repos: RepositoryService
    qemu_img: QemuImg
    scratch: Path

    def manifest(self, target: OpenTarget, point_id: str) -> Manifest:
        with self.db.session() as s:
            row = s.scalars(
                select(CopyPoint).where(
                    CopyPoint.target_id == target.info.id, CopyPoint.restore_point_id == point_id
                )
            ).first()
            if row is None:
                raise NotFound(f"restore point {point_id} is not on copy target {target.info.name}")
            name, version = row.manifest_name, row.manifest_version
        return read_manifest(target.bucket, target.key, name, version)

    def import_points(self, target: OpenTarget) -> int:
        """Every manifest in the bucket into this hub's list of the target's points
        (and their VMs into its catalogue); returns how many were new."""
        added = 0
        for name in target.bucket.names(POINTS):
            manifest = read_manifest(target.bucket, target.key, name)
            with self.db.session() as s:
                known = s.scalars(
                    select(CopyPoint).where(
                        CopyPoint.target_id == target.info.id,
                        CopyPoint.restore_point_id == manifest.restore_point_id,
                    )
                ).first()
                if known is not None:
                    continue
                _ensure_vm(s, manifest)
                s.add(
                    CopyPoint(
                        target_id=target.info.id,
                        restore_point_id=manifest.restore_point_id,
                        vm_id=manifest.vm.id,
                        vm_name=manifest.vm.name,
                        point_created_at=manifest.created_at,
                        manifest_name=name,
                        manifest_version="",
                    )
                )
                added += 1
        log.info("copy target %s imported: %d new points", target.info.name, added)
        return added

    def fetch(
        self,
        target: OpenTarget,
        point_id: str,
        repo_ref: str | None,
        task_id: str,
        progress: FetchProgress,
    ) -> str:
        """The copied point into a repository, as a complete point of its VM."""
        manifest = self.manifest(target, point_id)
        with self.db.session() as s:
            if s.get(RestorePoint, point_id) is not None:
                raise Conflict(
                    f"restore point {point_id} is in this hub's repository already: restore it "
                    "from there"
                )
        repo = self.repos.get(repo_ref)
        progress.objects_total = sum(len(d.layers) for d in manifest.disks)
        work = self.scratch / "fetch" / task_id
        work.mkdir(parents=True, exist_ok=True)
        made: list[tuple[int, str, Path]] = []
        try:
            for disk in manifest.disks:
                disk_id = new_id()
                relative = RepositoryService.disk_file(manifest.vm.id, disk.disk_key, disk_id)
                path = self.repos.resolve(repo, relative)
                path.parent.mkdir(parents=True, exist_ok=True)
                made.append((disk.disk_key, disk_id, path))
                if len(disk.layers) == 1:  # a full: it goes straight into the repository
                    self._download_chain(target, disk.layers, path.parent, progress, path)
                else:
                    folder = work / str(disk.disk_key)
                    top = self._download_chain(target, disk.layers, folder, progress)
                    self.qemu_img.convert(top, path, ["-O", "qcow2"])
                sync_file(path)
            self._record(manifest, repo.id, task_id, made)
        except BaseException:
            for _, _, path in made:
                path.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return f"restore point {point_id} fetched from {target.info.name} into {repo.name}"

    def _download_chain(
        self,
        target: OpenTarget,
        layers: list[Layer],
        folder: Path,
        progress: FetchProgress,
        last: Path | None = None,
    ) -> Path:
        """The layers as files in `folder` (the last one at `last` if given), each
        an overlay on the one before."""
        folder.mkdir(parents=True, exist_ok=True)
        below: Path | None = None
        for n, layer in enumerate(layers):
            path = last if last is not None and n == len(layers) - 1 else folder / f"{n}.qcow2"
            download_layer(target, layer, path, progress)
            if layer.kind == "incremental":
                if below is None:
                    raise ObjectChanged(f"object {layer.name} is an incremental with no full below")
                self.qemu_img.rebase(path, below.name, unsafe=True)
            else:
                self.qemu_img.rebase(path, "", unsafe=True)
            below = path
            progress.objects_done += 1
        assert below is not None
        return below

    def _record(
        self, manifest: Manifest, repo_id: str, task_id: str, made: list[tuple[int, str, Path]]
    ) -> None:
        by_key = {d.disk_key: d for d in manifest.disks}
        with self.db.session() as s:
            _ensure_vm(s, manifest)
            s.add(
                RestorePoint(
                    id=manifest.restore_point_id,
                    vm_id=manifest.vm.id,
                    job_id=task_id,
                    repository_id=repo_id,
                    status=PointStatus.COMPLETE,
                    created_at=manifest.created_at,
                    completed_at=manifest.completed_at or utcnow(),
                    layout=manifest.layout,
                )
            )
            s.flush()
            for disk_key, disk_id, path in made:
                disk = by_key[disk_key]
                s.add(
                    RestorePointDisk(
                        id=disk_id,
                        restore_point_id=manifest.restore_point_id,
                        disk_key=disk_key,
                        parent_id=None,
                        file_path=RepositoryService.disk_file(manifest.vm.id, disk_key, disk_id),
                        backup_type="full",
                        full_reason="fetched from an offsite copy",
                        virtual_size=disk.virtual_size,
                        file_size=path.stat().st_size,
                        change_id=disk.change_id,
                        checksum=disk.checksum,
                        checksum_block=disk.checksum_block,
                        areas=disk.packed_areas(),
                        status=PointStatus.COMPLETE,
                    )
                )

    def verify(self, target: OpenTarget, progress: FetchProgress) -> tuple[int, int]:
        """Every copied point's objects read back and checked; a point with an object
        missing or changed is marked invalid on this target. Returns (points, invalid)."""
        with self.db.session() as s:
            rows = s.scalars(select(CopyPoint).where(CopyPoint.target_id == target.info.id)).all()
            points = [(r.restore_point_id) for r in rows]
        invalid = 0
        checked: dict[tuple[str, str], str | None] = {}
        for point_id in points:
            error: str | None = None
            try:
                manifest = self.manifest(target, point_id)
                layers = [layer for d in manifest.disks for layer in d.layers]
                progress.objects_total += len(layers)
                for layer in layers:
                    at = (layer.name, layer.version_id)
                    if at not in checked:
                        checked[at] = self._check_layer(target, layer, progress)
                    error = error or checked[at]
                    progress.objects_done += 1
            except SendenseError as exc:  # a manifest that does not open, or is gone
                error = exc.message
            invalid += error is not None
            with self.db.session() as s:
                row = s.scalars(
                    select(CopyPoint).where(
                        CopyPoint.target_id == target.info.id,
                        CopyPoint.restore_point_id == point_id,
                    )
                ).one()
                row.verified_at = utcnow()
                row.verify_error = error
                row.status = "invalid" if error else "copied"
        return len(points), invalid

    @staticmethod
    def _check_layer(target: OpenTarget, layer: Layer, progress: FetchProgress) -> str | None:
        try:
            download_layer(target, layer, None, progress)
        except SendenseError as exc:  # changed, cut short, or gone
            return exc.message
        return None
