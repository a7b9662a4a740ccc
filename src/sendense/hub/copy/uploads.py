"""One object uploaded from a local file: sealed frames gathered into multipart
parts of at least PART_BYTES (S3 wants 5 MiB but for the last), up to PARALLEL
parts in flight, each part's plaintext range recorded as it is made, so that an
upload cut short (a killed hub, a lost link) resumes where the bucket's parts end:
the parts it holds are never sent again."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import ColumnElement, delete, select

from sendense.hub.copy.bucket import Bucket
from sendense.hub.copy.sealing import FRAME, CopyKey, Sealer
from sendense.hub.db.database import Database
from sendense.hub.db.models import CopyUpload

log = logging.getLogger(__name__)
PART_BYTES = 16 << 20
PARALLEL = 4
SEALERS = 2  # threads compressing and encrypting frames (zstd releases the GIL)
MAX_PARTS = 10_000


@dataclass
class UploadCount:
    """What an upload did: parts sent now, parts the bucket had from before."""

    sent_parts: int = 0
    kept_parts: int = 0
    sent_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sent(self, size: int) -> None:
        with self.lock:
            self.sent_parts += 1
            self.sent_bytes += size


@dataclass(frozen=True)
class Uploaded:
    name: str
    version_id: str
    plain_size: int
    plain_sha256: str
    sealed_size: int


def fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _part_size(total: int) -> int:
    size = PART_BYTES
    while total // size >= MAX_PARTS - 1:
        size *= 2
    return size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(FRAME):
            digest.update(chunk)
    return digest.hexdigest()


class ObjectUpload:
    """Uploads `path` as object `name` (a new one, or the one an unfinished
    upload of the same target, point and disk began, if its source is unchanged)."""

    def __init__(
        self,
        db: Database,
        bucket: Bucket,
        key: CopyKey,
        owner: tuple[str, str, int],
        retain_until: datetime | None,
    ) -> None:
        self.db = db
        self.bucket = bucket
        self.key = key
        self.target_id, self.point_id, self.disk_key = owner
        self.retain_until = retain_until
        self.count = UploadCount()
        self._sealing = ThreadPoolExecutor(SEALERS, thread_name_prefix="copy-seal")

    def run(self, path: Path, new_name: str) -> Uploaded:
        try:
            return self._run(path, new_name)
        finally:
            self._sealing.shutdown(wait=True)

    def _run(self, path: Path, new_name: str) -> Uploaded:
        source = fingerprint(path)
        total = path.stat().st_size
        row = self._resumable(source)
        if row is None:
            name, upload_id = new_name, self.bucket.start_upload(new_name, self.retain_until)
            ranges: dict[str, list[int]] = {}
            self._record(name, upload_id, source, ranges)
            done: dict[int, str] = {}
        else:
            name, upload_id, ranges = row
            done = {
                n: e
                for n, e in (self.bucket.uploaded_parts(name, upload_id) or {}).items()
                if str(n) in ranges
            }
            self.count.kept_parts = len(done)
            log.info("resuming upload of %s: %d parts in the bucket already", name, len(done))
        etags = dict(done)
        # Parts made in order from the start hash the plaintext as they go; a
        # resumed upload reads the file once more for it.
        digest = hashlib.sha256() if not ranges else None
        part_bytes = _part_size(total)
        with (
            path.open("rb") as f,
            ThreadPoolExecutor(PARALLEL, thread_name_prefix="copy-part") as pool,
        ):
            pending: list[tuple[int, Future[str]]] = []
            # Parts begun before whose bytes the bucket lacks: made again from their range.
            for number in sorted(int(n) for n in ranges if int(n) not in done):
                start, end = ranges[str(number)]
                body, _ = self._part(f, start, end, total)
                pending.append((number, pool.submit(self._send, name, upload_id, number, body)))
                pending = self._drain(pending, etags, PARALLEL)
            number = max((int(n) for n in ranges), default=0) + 1
            offset = max((ranges[n][1] for n in ranges), default=0)
            while offset < total or number == 1:
                end = min(total, offset + part_bytes)
                body, end = self._part(f, offset, end, total, grow_to=part_bytes, digest=digest)
                ranges[str(number)] = [offset, end]
                self._record(name, upload_id, source, ranges)
                pending.append((number, pool.submit(self._send, name, upload_id, number, body)))
                pending = self._drain(pending, etags, PARALLEL)
                number, offset = number + 1, end
            self._drain(pending, etags, 1)
        version = self.bucket.finish_upload(name, upload_id, etags)
        with self.db.session() as s:
            s.execute(delete(CopyUpload).where(*self._owner_filter()))
        # The sealed size of parts kept from before is not known here: it is taken
        # from the bucket once the object is whole.
        plain_sha256 = digest.hexdigest() if digest is not None else sha256_of(path)
        return Uploaded(name, version, total, plain_sha256, self.bucket.size(name, version))

    def _part(
        self,
        f: BinaryIO,
        start: int,
        end: int,
        total: int,
        grow_to: int = 0,
        digest: hashlib._Hash | None = None,
    ) -> tuple[bytes, int]:
        """The sealed frames of plaintext [start, end); with `grow_to`, more frames
        are added while the sealed part is under it (data that compresses well).
        Frames are read in order here and sealed by the sealing threads."""
        sealer = Sealer(self.key, self._object_tag(), first=start // FRAME)
        f.seek(start)
        pieces: list[bytes] = []
        size = 0
        position = start
        while not pieces or position < end or (grow_to and size < grow_to and position < total):
            batch: list[tuple[int, bytes, bool]] = []
            stop = max(end, position + SEALERS * FRAME)
            while position < min(stop, total) or not (batch or pieces):
                plain = f.read(min(FRAME, total - position))
                index = position // FRAME
                position += len(plain)
                if digest is not None:
                    digest.update(plain)
                batch.append((index, plain, position >= total))
                if not plain:
                    break
            sealed = list(self._sealing.map(lambda frame: sealer.seal_at(*frame), batch))
            pieces += sealed
            size += sum(len(p) for p in sealed)
            if position >= total:
                break
        return b"".join(pieces), position

    def _object_tag(self) -> str:
        return self._name

    def _send(self, name: str, upload_id: str, number: int, body: bytes) -> str:
        etag = self.bucket.put_part(name, upload_id, number, body)
        self.count.sent(len(body))
        return etag

    @staticmethod
    def _drain(
        pending: list[tuple[int, Future[str]]], etags: dict[int, str], keep: int
    ) -> list[tuple[int, Future[str]]]:
        while len(pending) >= keep and pending:
            number, future = pending.pop(0)
            etags[number] = future.result()
        return pending

    def _owner_filter(self) -> tuple[ColumnElement[bool], ...]:
        return (
            CopyUpload.target_id == self.target_id,
            CopyUpload.point_id == self.point_id,
            CopyUpload.disk_key == self.disk_key,
        )

    def _resumable(self, source: str) -> tuple[str, str, dict[str, list[int]]] | None:
        with self.db.session() as s:
            row = s.scalars(select(CopyUpload).where(*self._owner_filter())).first()
            if row is None:
                return None
            name, upload_id, ranges, same = (
                row.name,
                row.upload_id,
                dict(row.parts),
                row.source == source,
            )
        if same and self.bucket.uploaded_parts(name, upload_id) is not None:
            self._name = name
            return name, upload_id, ranges
        self.bucket.abort_upload(name, upload_id)
        with self.db.session() as s:
            s.execute(delete(CopyUpload).where(*self._owner_filter()))
        return None

    def _record(self, name: str, upload_id: str, source: str, ranges: dict[str, list[int]]) -> None:
        self._name = name
        with self.db.session() as s:
            row = s.scalars(select(CopyUpload).where(*self._owner_filter())).first()
            if row is None:
                s.add(
                    CopyUpload(
                        target_id=self.target_id,
                        point_id=self.point_id,
                        disk_key=self.disk_key,
                        name=name,
                        upload_id=upload_id,
                        source=source,
                        parts=dict(ranges),
                    )
                )
            else:
                row.parts = dict(ranges)


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
