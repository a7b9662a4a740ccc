"""A copied point's manifest: what restores it from the bucket alone (its VM, its
layout, each disk's chain of objects with their version ids and checksums),
sealed like every object. Its name, like every object's, is random."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from sendense.hub.copy.bucket import Bucket
from sendense.hub.copy.sealing import CopyKey, open_bytes, seal_bytes

FORMAT = 1
POINTS = "points/"
DATA = "data/"


def new_name(folder: str) -> str:
    """An object's name: random, so that no VM, disk or point is named in the bucket."""
    return f"{folder}{uuid.uuid4().hex}"


class Layer(BaseModel):
    name: str
    version_id: str
    kind: str  # full or incremental (an overlay on the layer before it)
    point_id: str
    plain_size: int
    plain_sha256: str
    sealed_size: int


class DiskManifest(BaseModel):
    disk_key: int
    virtual_size: int
    change_id: str | None
    checksum: str | None
    checksum_block: int | None
    areas: str | None  # base64 of checksum.pack_areas
    layers: list[Layer]  # from the full to this point's layer

    def packed_areas(self) -> bytes | None:
        return base64.b64decode(self.areas) if self.areas is not None else None


class VmManifest(BaseModel):
    id: str
    name: str
    vmware_uuid: str | None


class Manifest(BaseModel):
    format: int = FORMAT
    restore_point_id: str
    vm: VmManifest
    created_at: datetime
    completed_at: datetime | None
    layout: dict[str, Any] | None
    copied_at: datetime
    disks: list[DiskManifest]


def write_manifest(bucket: Bucket, key: CopyKey, manifest: Manifest) -> tuple[str, str]:
    name = new_name(POINTS)
    body = seal_bytes(key, name, manifest.model_dump_json().encode())
    return name, bucket.put(name, body, bucket.retain_until())


def read_manifest(bucket: Bucket, key: CopyKey, name: str, version_id: str = "") -> Manifest:
    data = open_bytes(key, name, bucket.get(name, version_id or None))
    return Manifest.model_validate(json.loads(data))


def encode_areas(packed: bytes | None) -> str | None:
    return base64.b64encode(packed).decode() if packed is not None else None
