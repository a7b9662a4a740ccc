"""Restore, hub side: disk download (raw, QCOW2, VMDK) and instant NBD access."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from sendense.hub.access import AccessInfo
from sendense.hub.api.deps import HubDep, require_token
from sendense.hub.disk_export import EXTENSIONS, DiskExporter
from sendense.hub.disk_stream import raw_stream
from sendense.hub.service import Hub

router = APIRouter(prefix="/api/v1", tags=["restore"], dependencies=[Depends(require_token)])
FILE_CHUNK = 4 << 20


class DiskAccessOut(BaseModel):
    disk_key: int
    port: int
    export_name: str
    uri: str


class AccessOut(BaseModel):
    id: str
    restore_point_id: str
    purpose: str
    started_at: datetime | None
    disks: list[DiskAccessOut]


def _access_out(info: AccessInfo) -> AccessOut:
    return AccessOut(
        id=info.id,
        restore_point_id=info.restore_point_id,
        purpose=info.purpose,
        started_at=info.started_at,
        disks=[DiskAccessOut(**vars(d)) for d in info.disks],
    )


def exporter_of(hub: Hub) -> DiskExporter:
    return DiskExporter(hub.db, hub.repos, hub.settings.scratch_dir, hub.settings.qemu_img)


class _OwnedStream(StreamingResponse):
    """A stream that releases what it reads from (a temporary file, a qemu-nbd)
    however the response ends: sent, failed, or the client gone."""

    def __init__(
        self, content: AsyncGenerator[bytes], size: int, filename: str,
        release: Callable[[], Awaitable[None]],
    ) -> None:  # fmt: skip
        headers = {
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
        }
        super().__init__(content, headers=headers, media_type="application/octet-stream")
        self._content = content
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._content.aclose()
            finally:
                await self._release()


async def _file_chunks(path: Path) -> AsyncGenerator[bytes]:
    with path.open("rb") as handle:
        while chunk := await run_in_threadpool(handle.read, FILE_CHUNK):
            yield chunk


@router.get("/restore-points/{point_id}/disks/{disk_key}/download")
async def download_disk(
    hub: HubDep,
    point_id: str,
    disk_key: int,
    fmt: Annotated[Literal["raw", "qcow2", "vmdk"], Query(alias="format")] = "raw",
) -> StreamingResponse:
    """The disk as of this restore point. Raw streams straight from the chain;
    QCOW2 and VMDK are converted on the hub first, then sent."""
    exporter = exporter_of(hub)
    source = await run_in_threadpool(exporter.source, point_id, disk_key)
    filename = f"{point_id}-{disk_key}.{EXTENSIONS[fmt]}"
    if fmt == "raw":
        stack = AsyncExitStack()
        try:
            stream = await stack.enter_async_context(
                raw_stream(source, hub.settings.scratch_dir, hub.settings.qemu_img)
            )
        except BaseException:
            await stack.aclose()
            raise
        return _OwnedStream(stream.chunks, stream.size, filename, stack.aclose)
    result = await run_in_threadpool(exporter.to_scratch, point_id, disk_key, fmt)

    async def discard() -> None:
        await run_in_threadpool(exporter.discard, result)

    try:
        return _OwnedStream(_file_chunks(result.path), result.file_size, filename, discard)
    except BaseException:
        await discard()
        raise


@router.post("/restore-points/{point_id}/access", status_code=201)
def open_access(hub: HubDep, point_id: str) -> AccessOut:
    """Serve the point's disks over NBD; writes go to a throwaway overlay."""
    return _access_out(hub.access.open(point_id, purpose="instant"))


@router.get("/access")
def list_access(hub: HubDep) -> list[AccessOut]:
    return [_access_out(a) for a in hub.access.all()]


@router.get("/access/{access_id}")
def get_access(hub: HubDep, access_id: str) -> AccessOut:
    return _access_out(hub.access.get(access_id))


@router.delete("/access/{access_id}")
def close_access(hub: HubDep, access_id: str) -> AccessOut:
    info = hub.access.get(access_id)  # not open (any more): 404
    hub.access.close(access_id)
    return _access_out(info)
