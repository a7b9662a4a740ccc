"""Restore-point verification: prove each disk of a restore point reads back as it
was backed up.

Each backup recorded, per disk, the areas it read and a BLAKE3 checksum over them
(common/checksum.py). A disk of a restore point is its chain: the full, then each
incremental. Verification checks every layer of the chain: `qemu-img check` of its
file, then the layer's areas read again from the image as of that layer (qemu-nbd,
read-only, with its backing chain) and hashed the same way. A layer is valid when
it and all layers below it are; an invalid layer makes every restore point built
on it invalid, and the next backup of that disk a full (backups._plan_disk).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from sendense.common.checksum import BlockHasher, block_digest, blocks, unpack_areas
from sendense.common.errors import InvalidInput, NotFound
from sendense.hub.db.database import Database
from sendense.hub.db.models import PointStatus, RestorePoint, RestorePointDisk, utcnow
from sendense.hub.db.vms import find_vm
from sendense.hub.repository.image_reader import read_only_uri
from sendense.hub.repository.repositories import RepositoryService, supports_direct_io
from sendense.nbd.client import NbdClient

log = logging.getLogger(__name__)
IN_FLIGHT = 8


@dataclass
class VerifyProgress:
    bytes_total: int = 0
    bytes_done: int = 0
    layers_total: int = 0
    layers_done: int = 0


@dataclass(frozen=True)
class _Layer:
    id: str
    point_id: str
    disk_key: int
    parent_id: str | None
    repository_id: str
    file_path: str
    checksum: str | None
    checksum_block: int | None
    areas: list[tuple[int, int]] | None

    @property
    def size(self) -> int:
        return sum(length for _start, length in self.areas or [])


def _layer(row: RestorePointDisk) -> _Layer:
    point = row.restore_point
    return _Layer(
        row.id,
        point.id,
        row.disk_key,
        row.parent_id,
        point.repository_id,
        row.file_path,
        row.checksum,
        row.checksum_block,
        None if row.areas is None else unpack_areas(row.areas),
    )


@dataclass
class DiskVerdict:
    disk_key: int
    valid: bool
    error: str | None = None


@dataclass
class PointVerdict:
    restore_point_id: str
    valid: bool
    disks: list[DiskVerdict] = field(default_factory=list)


class Verifier:
    def __init__(self, db: Database, repos: RepositoryService, scratch: Path) -> None:
        self.db = db
        self.repos = repos
        self.scratch = scratch

    def points_of(self, ref: str) -> list[str]:
        """A restore point's id, or a VM's name or id: all its finished restore points."""
        with self.db.session() as s:
            point = s.get(RestorePoint, ref)
            if point is not None:
                if point.status == PointStatus.INCOMPLETE:
                    raise InvalidInput(f"restore point {ref} is not finished")
                return [point.id]
            vm = find_vm(s, ref)
            if vm is None:
                raise NotFound(f"no restore point or VM named {ref!r}")
            ids = list(
                s.scalars(
                    select(RestorePoint.id)
                    .where(
                        RestorePoint.vm_id == vm.id,
                        RestorePoint.status != PointStatus.INCOMPLETE,
                    )
                    .order_by(RestorePoint.completed_at)
                )
            )
        if not ids:
            raise NotFound(f"VM {ref!r} has no restore point")
        return ids

    def verify(
        self,
        point_ids: list[str],
        progress: VerifyProgress | None = None,
        on_layer: Callable[[], None] | None = None,
    ) -> list[PointVerdict]:
        progress = progress or VerifyProgress()
        layers = self._load(point_ids)
        progress.layers_total = len(layers)
        progress.bytes_total = sum(layer.size for layer in layers.values())
        own: dict[str, str | None] = {}  # layer id -> its own error
        for layer in self._bases_first(layers):
            own[layer.id] = asyncio.run(self._check_layer(layer, progress))
            progress.layers_done += 1
            if on_layer is not None:
                on_layer()
        errors = {lid: self._chain_error(lid, layers, own) for lid in layers}
        record_layer_results(self.db, errors)
        return self._verdicts(point_ids, layers, errors)

    def layer_errors(self, layer_ids: list[str]) -> dict[str, str | None]:
        """Each layer's own check (not its chain's), recording nothing."""
        with self.db.session() as s:
            rows = s.scalars(select(RestorePointDisk).where(RestorePointDisk.id.in_(layer_ids)))
            layers = [_layer(row) for row in rows]
        return {
            layer.id: asyncio.run(self._check_layer(layer, VerifyProgress())) for layer in layers
        }

    def rehash(self, image: Path, areas: list[tuple[int, int]], block: int) -> str:
        """The checksum of `areas` as `image` (with its backing chain) reads now."""
        cache = "none" if supports_direct_io(image.parent) else "writeback"

        async def run() -> str:
            async with read_only_uri(image, self.scratch, cache) as uri:
                return await self._hash(uri, areas, block, VerifyProgress())

        return asyncio.run(run())

    def _load(self, point_ids: list[str]) -> dict[str, _Layer]:
        layers: dict[str, _Layer] = {}
        with self.db.session() as s:
            todo = list(
                s.scalars(
                    select(RestorePointDisk.id).where(
                        RestorePointDisk.restore_point_id.in_(point_ids)
                    )
                )
            )
            while todo:
                row = s.get(RestorePointDisk, todo.pop())
                if row is None or row.id in layers:
                    continue
                layers[row.id] = _layer(row)
                if row.parent_id is not None:
                    todo.append(row.parent_id)
        return layers

    @staticmethod
    def _bases_first(layers: dict[str, _Layer]) -> list[_Layer]:
        def depth(layer: _Layer) -> int:
            n = 0
            while layer.parent_id is not None:
                layer = layers[layer.parent_id]
                n += 1
            return n

        return sorted(layers.values(), key=depth)

    @staticmethod
    def _chain_error(lid: str, layers: dict[str, _Layer], own: dict[str, str | None]) -> str | None:
        layer: _Layer | None = layers[lid]
        while layer is not None:
            if own[layer.id] is not None:
                return own[layer.id] if layer.id == lid else f"its layer {layer.id} is invalid"
            layer = layers[layer.parent_id] if layer.parent_id else None
        return None

    async def _check_layer(self, layer: _Layer, progress: VerifyProgress) -> str | None:
        repo = self.repos.get(layer.repository_id)
        image = self.repos.resolve(repo, layer.file_path)
        if not image.exists():
            return f"disk {layer.disk_key}: {layer.file_path} is missing"
        check = await asyncio.to_thread(self.repos.check, repo, layer.file_path)
        if not check.clean:
            return f"disk {layer.disk_key}: qemu-img check exit {check.returncode}: {check.output}"
        if layer.areas is None or not layer.checksum or not layer.checksum_block:
            log.warning("layer %s has no recorded block list: checked by qemu-img only", layer.id)
            return None
        cache = "none" if supports_direct_io(repo.path) else "writeback"
        async with read_only_uri(image, self.scratch, cache) as uri:
            found = await self._hash(uri, layer.areas, layer.checksum_block, progress)
        if found != layer.checksum:
            return f"disk {layer.disk_key}: data of {layer.file_path} differs from the backup"
        return None

    @staticmethod
    async def _hash(
        uri: str, areas: list[tuple[int, int]], block: int, progress: VerifyProgress
    ) -> str:
        hasher = BlockHasher()
        zero_block = bytes(block)
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one(client: NbdClient, offset: int, length: int) -> None:
            try:
                data = await client.read(offset, length)
                digest = await asyncio.to_thread(block_digest, data, zero_block)
                hasher.add(offset, length, digest)
                progress.bytes_done += length
            finally:
                slots.release()

        async with await NbdClient.connect(uri) as client, asyncio.TaskGroup() as group:
            for offset, length in blocks(areas, block):
                await slots.acquire()
                group.create_task(one(client, offset, length))
        return hasher.hexdigest()

    @staticmethod
    def _verdicts(
        point_ids: list[str], layers: dict[str, _Layer], errors: dict[str, str | None]
    ) -> list[PointVerdict]:
        verdicts = []
        for pid in point_ids:
            disks = [
                DiskVerdict(layer.disk_key, errors[layer.id] is None, errors[layer.id])
                for layer in sorted(layers.values(), key=lambda x: x.disk_key)
                if layer.point_id == pid
            ]
            verdicts.append(PointVerdict(pid, all(d.valid for d in disks), disks))
        return verdicts


def record_layer_results(db: Database, errors: dict[str, str | None]) -> None:
    """Store each layer's verdict (None: valid); a layer found invalid makes every
    layer built on it, and the points that hold them, invalid too."""
    now = utcnow()
    bad = {lid for lid, error in errors.items() if error}
    with db.session() as s:
        touched = set()
        for lid, error in errors.items():
            row = s.get(RestorePointDisk, lid)
            if row is None:
                continue
            row.status = PointStatus.INVALID if error else PointStatus.COMPLETE
            row.verified_at, row.verify_error = now, error
            touched.add(row.restore_point_id)
        # Points built later on an invalid layer are invalid too.
        frontier = set(bad)
        while frontier:
            children = s.scalars(
                select(RestorePointDisk).where(RestorePointDisk.parent_id.in_(frontier))
            ).all()
            frontier = set()
            for child in children:
                if child.id not in bad:
                    bad.add(child.id)
                    frontier.add(child.id)
                    child.status = PointStatus.INVALID
                    child.verify_error = f"its parent layer {child.parent_id} is invalid"
        touched |= {
            d.restore_point_id
            for d in s.scalars(select(RestorePointDisk).where(RestorePointDisk.id.in_(bad)))
        }
        for point in s.scalars(select(RestorePoint).where(RestorePoint.id.in_(touched))):
            problems = [
                f"disk {d.disk_key}: {d.verify_error}"
                if not d.verify_error.startswith("disk")
                else d.verify_error
                for d in point.disks
                if d.status == PointStatus.INVALID and d.verify_error
            ]
            point.status = PointStatus.INVALID if problems else PointStatus.COMPLETE
            point.verify_error = "; ".join(problems) or None
            if any(d.id in errors for d in point.disks):
                point.verified_at = now
    for lid in bad:
        log.warning("restore point layer %s is invalid: %s", lid, errors.get(lid))
