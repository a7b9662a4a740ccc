"""/api/v1/restore-points/{id}/browse: file-level restore. Open a restore point's
filesystems in an appliance (a task), list them, list a folder (paged), look up
one path, find names, download a file (Range supported) or a folder as tar or
zip; close. Every download is in the audit log (audit_trail.AUDITED_READS)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from sendense.common.errors import SendenseError
from sendense.hub.api.deps import HubDep, PrincipalDep, authorize
from sendense.hub.files.browse import BrowseSession, Entry
from sendense.hub.tasks.task_log_handler import write_line

router = APIRouter(
    prefix="/api/v1/restore-points/{point_id}/browse",
    tags=["file restore"],
    dependencies=[Depends(authorize)],
)
FsQuery = Annotated[str | None, Query(max_length=255, description="a filesystem's id")]
PathQuery = Annotated[str, Query(max_length=4096, description="from the filesystem's root")]
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(SendenseError):
    http_status = 416
    exit_code = 2
    code = "range_not_satisfiable"


class DiskOut(BaseModel):
    disk_key: int
    device: str
    partition_table: str | None


class FilesystemOut(BaseModel):
    id: str
    type: str
    label: str
    size: int
    used: int | None
    disk_key: int | None
    encrypted: str | None
    readable: bool
    error: str | None


class BrowseOut(BaseModel):
    task_id: str
    restore_point_id: str
    opened_at: datetime
    disks: list[DiskOut]
    filesystems: list[FilesystemOut]


class EntryOut(BaseModel):
    name: str
    path: str
    type: str
    size: int
    mode: str
    uid: int
    gid: int
    mtime: datetime
    target: str | None


class ListingOut(BaseModel):
    fs: str
    path: str
    total: int
    offset: int
    entries: list[EntryOut]


class FindOut(BaseModel):
    fs: str
    paths: list[str]
    truncated: bool


def _out(session: BrowseSession) -> BrowseOut:
    return BrowseOut(
        task_id=session.task_id,
        restore_point_id=session.point_id,
        opened_at=session.opened_at,
        disks=[DiskOut(**vars(d)) for d in session.disks],
        filesystems=_filesystems(session),
    )


def _filesystems(session: BrowseSession) -> list[FilesystemOut]:
    return [
        FilesystemOut(
            id=f.id,
            type=f.type,
            label=f.label,
            size=f.size,
            used=f.used,
            disk_key=f.disk_key,
            encrypted=f.encrypted,
            readable=f.mounted,
            error=f.error,
        )
        for f in session.filesystems
    ]


def _entry(entry: Entry) -> EntryOut:
    return EntryOut(**vars(entry))


@router.post("", status_code=201)
def open_browse(hub: HubDep, principal: PrincipalDep, point_id: str) -> BrowseOut:
    """Open the point read-only in an appliance (10 to 30 s), or join the session
    open on it already; the answer lists its disks and filesystems."""
    return _out(hub.files.open(point_id, principal.starter))


@router.get("")
def show_browse(hub: HubDep, point_id: str) -> BrowseOut:
    return _out(hub.files.get(point_id))


class ClosedOut(BaseModel):
    task_id: str
    restore_point_id: str
    state: Literal["closed"] = "closed"


@router.delete("")
def close_browse(hub: HubDep, point_id: str) -> ClosedOut:
    return ClosedOut(task_id=hub.files.close(point_id), restore_point_id=point_id)


@router.get("/filesystems")
def filesystems(hub: HubDep, point_id: str) -> list[FilesystemOut]:
    return _filesystems(hub.files.get(point_id))


@router.get("/ls")
def ls(
    hub: HubDep,
    point_id: str,
    fs: FsQuery = None,
    path: PathQuery = "/",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> ListingOut:
    """A folder's entries, by name, `limit` from `offset` (of `total`)."""
    listing = hub.files.get(point_id).ls(fs, path, offset, limit)
    return ListingOut(
        fs=listing.fs,
        path=listing.path,
        total=listing.total,
        offset=listing.offset,
        entries=[_entry(e) for e in listing.entries],
    )


@router.get("/stat")
def stat(hub: HubDep, point_id: str, path: PathQuery, fs: FsQuery = None) -> EntryOut:
    return _entry(hub.files.get(point_id).stat(fs, path))


@router.get("/find")
def find(
    hub: HubDep,
    point_id: str,
    name: Annotated[str, Query(min_length=1, max_length=255, description="shell wildcards")],
    fs: FsQuery = None,
    path: PathQuery = "/",
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> FindOut:
    found = hub.files.get(point_id).find(fs, path, name, limit)
    return FindOut(fs=found.fs, paths=found.paths, truncated=found.truncated)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[first, last] of a single `Range: bytes=` range; None for the whole file."""
    if not header:
        return None
    found = RANGE.match(header.strip())
    if found is None or found.group(1) == found.group(2) == "":
        raise RangeNotSatisfiable(f"one range of bytes, as bytes=FIRST-LAST: not {header[:60]!r}")
    first_text, last_text = found.groups()
    if first_text == "":  # the last N bytes
        first, last = max(0, size - int(last_text)), size - 1
    else:
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size or last < first:
        raise RangeNotSatisfiable(f"bytes {header[6:60]} are not in this {size}-byte file")
    return first, last


async def _closing(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks, read in a thread; the source closes however the response ends
    (the client gone too), which frees the appliance."""
    done = object()
    try:
        while (chunk := await run_in_threadpool(next, chunks, done)) is not done:
            yield chunk  # type: ignore[misc]
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await run_in_threadpool(close)


@router.get("/download")
def download(
    hub: HubDep,
    principal: PrincipalDep,
    request: Request,
    point_id: str,
    path: PathQuery,
    fs: FsQuery = None,
    archive: Annotated[Literal["tar", "zip"], Query(alias="format")] = "tar",
) -> StreamingResponse:
    """A file (its size; one `Range` of bytes), or a folder as tar or zip."""
    session = hub.files.get(point_id)
    filesystem = session.filesystem(fs)
    request.state.audit_target = {"fs": filesystem.id, "path": path, "format": archive}
    found = session.locate(filesystem.id, path)
    entry = found.entry
    headers = {"Accept-Ranges": "bytes"}
    status = 200
    byte_range = None
    if entry.type == "file":
        byte_range = _byte_range(request.headers.get("range"), entry.size)
        if byte_range is not None:
            status = 206
            headers["Content-Range"] = f"bytes {byte_range[0]}-{byte_range[1]}/{entry.size}"
    got = session.download(found, archive, byte_range)
    if got.size is not None:
        headers["Content-Length"] = str(got.size)
    headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(got.name)}"
    write_line(
        hub.task_logs,
        session.task_id,
        "INFO",
        f"download {filesystem.id}:{path} by {principal.starter}"
        + (f" bytes {byte_range[0]}-{byte_range[1]}" if byte_range else ""),
    )
    return StreamingResponse(
        _closing(got.chunks),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )
