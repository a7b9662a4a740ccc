"""/api/v1/restore-points: list and show points, protect one, download a disk
(raw, QCOW2, VMDK), open an instant access, restore the whole VM to vCenter."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import update
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from sendense.common.contract import new_vm_name
from sendense.common.errors import NotFound, SendenseError
from sendense.hub.api.deps import HubDep, PrincipalDep, QueriesDep, authorize, demand
from sendense.hub.api.routes.access import opened_out
from sendense.hub.api.schemas import AccessOpenedOut, RestorePointOut
from sendense.hub.auth.roles import FORCE
from sendense.hub.db.models import RestorePoint, TaskKind
from sendense.hub.restore.conversion import EXTENSIONS, DiskSource
from sendense.hub.restore.instant_access import INSTANT
from sendense.hub.restore.raw_stream import raw_stream
from sendense.hub.restore.to_vcenter import RestoreVmRequest
from sendense.hub.service import Hub
from sendense.hub.tasks.runner import internal_error
from sendense.hub.tasks.task_log_handler import write_line

router = APIRouter(
    prefix="/api/v1/restore-points", tags=["restore"], dependencies=[Depends(authorize)]
)
FILE_CHUNK = 4 << 20


class ProtectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    protected: bool = True


class RestoreVmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=80, description="the VM to create")
    datastore: str | None = Field(
        default=None, max_length=255, description="default: where the first disk was"
    )
    folder: str | None = Field(
        default=None, max_length=1024, description="VM folder (default: the datacenter's)"
    )
    force: bool = Field(default=False, description="replace a powered-off VM of that name")
    power_on: bool = False
    vcenter: str | None = Field(default=None, max_length=255, description="if several")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return new_vm_name(value)


class RestoreVmQueuedOut(BaseModel):
    job_id: str
    state: str
    restore_point_id: str
    vm_name: str
    datacenter: str
    datastore: str
    folder: str
    replaces: bool
    bytes_needed: int
    warnings: list[str]


@router.get("")
def list_restore_points(queries: QueriesDep, vm: str | None = None) -> list[RestorePointOut]:
    return queries.restore_points(vm)


@router.get("/{point_id}")
def get_restore_point(queries: QueriesDep, point_id: str) -> RestorePointOut:
    return queries.restore_point(point_id)


@router.post("/{point_id}/protect")
def protect(hub: HubDep, point_id: str, body: ProtectIn) -> dict[str, bool]:
    with hub.db.session() as s:
        done = s.execute(
            update(RestorePoint).where(RestorePoint.id == point_id).values(protected=body.protected)
        )
        if getattr(done, "rowcount", 0) != 1:
            raise NotFound(f"restore point {point_id} does not exist")
    return {"protected": body.protected}


class _OwnedStream(StreamingResponse):
    """A stream that releases what it reads from (a temporary file, a qemu-nbd)
    however the response ends: sent, failed, or the client gone."""

    def __init__(
        self,
        content: AsyncGenerator[bytes],
        size: int,
        filename: str,
        release: Callable[[], Awaitable[None]],
        ended: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """`ended(bytes sent)` is told last, however the response ended."""
        headers = {
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
        }
        self.sent = 0
        counted = self._counted(content)
        super().__init__(counted, headers=headers, media_type="application/octet-stream")
        self._content = content
        self._release = release
        self._ended = ended

    async def _counted(self, content: AsyncGenerator[bytes]) -> AsyncGenerator[bytes]:
        async for chunk in content:
            yield chunk
            self.sent += len(chunk)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: a client that goes cancels the response, never its clean-up.
            with anyio.CancelScope(shield=True):
                try:
                    await self._content.aclose()
                finally:
                    try:
                        await self._release()
                    finally:
                        if self._ended is not None:
                            await self._ended(self.sent)


async def _file_chunks(path: Path) -> AsyncGenerator[bytes]:
    with path.open("rb") as handle:
        while chunk := await run_in_threadpool(handle.read, FILE_CHUNK):
            yield chunk


@router.get("/{point_id}/disks/{disk_key}/download")
async def download_disk(
    hub: HubDep,
    principal: PrincipalDep,
    point_id: str,
    disk_key: int,
    fmt: Annotated[Literal["raw", "qcow2", "vmdk"], Query(alias="format")] = "raw",
) -> StreamingResponse:
    """The disk as of this restore point. Raw streams straight from the chain;
    QCOW2 and VMDK are converted on the hub first, then sent. The download is a
    task (kind `export`): complete once every byte is sent, failed otherwise."""
    converter = hub.converter
    source = await run_in_threadpool(converter.source, point_id, disk_key)
    filename = f"{point_id}-{disk_key}.{EXTENSIONS[fmt]}"
    task_id = await run_in_threadpool(
        hub.tasks.open_for_point, TaskKind.EXPORT, point_id, principal.starter
    )
    write_line(hub.task_logs, task_id, "INFO", f"disk {disk_key} of point {point_id} as {fmt}")
    try:
        opened = await _open_download(hub, point_id, disk_key, fmt, source)
    except SendenseError as exc:
        await run_in_threadpool(hub.tasks.close, task_id, exc.message, exc.code)
        raise
    except BaseException as exc:
        await run_in_threadpool(hub.tasks.close, task_id, internal_error(exc), "internal_error")
        raise
    content, size, release = opened

    async def ended(sent: int) -> None:
        error = None if sent == size else f"the download ended after {sent} of {size} bytes"
        write_line(hub.task_logs, task_id, "ERROR" if error else "INFO", error or f"{sent} bytes")
        await run_in_threadpool(hub.tasks.close, task_id, error, "download_incomplete")

    return _OwnedStream(content, size, filename, release, ended)


async def _open_download(
    hub: Hub, point_id: str, disk_key: int, fmt: str, source: DiskSource
) -> tuple[AsyncGenerator[bytes], int, Callable[[], Awaitable[None]]]:
    """The bytes to send, their count, and what releases them."""
    if fmt == "raw":
        stack = AsyncExitStack()
        try:
            stream = await stack.enter_async_context(
                raw_stream(source, hub.settings.scratch_dir, hub.repos.qemu_img)
            )
        except BaseException:
            await stack.aclose()
            raise
        return stream.chunks, stream.size, stack.aclose
    converter = hub.converter
    result = await run_in_threadpool(converter.to_scratch, point_id, disk_key, fmt)

    async def discard() -> None:
        await run_in_threadpool(converter.discard, result)

    return _file_chunks(result.path), result.file_size, discard


@router.post("/{point_id}/access", status_code=201)
def open_access(hub: HubDep, principal: PrincipalDep, point_id: str) -> AccessOpenedOut:
    """Serve the point's disks over NBD with TLS; writes go to a throwaway overlay.
    The answer carries the pre-shared key, the only time the hub gives it."""
    opened = hub.access.open(point_id, purpose=INSTANT)
    hub.tasks.attribute(opened.id, principal.starter)
    return opened_out(opened)


@router.post("/{point_id}/restore-vm", status_code=202)
def restore_vm(
    hub: HubDep, principal: PrincipalDep, point_id: str, body: RestoreVmIn
) -> RestoreVmQueuedOut:
    """A restore point as a VM in vCenter. Refused at once (4xx, nothing changed)
    for an unknown point, a name in use without `force`, a running VM, an unknown
    datastore or one without room. `force` (replace an existing VM) is admin's."""
    if body.force:
        demand(principal, FORCE)
    queued = hub.restores.submit(RestoreVmRequest(point_id, **body.model_dump()))
    hub.tasks.attribute(queued.job_id, principal.starter)
    plan = queued.plan
    return RestoreVmQueuedOut(
        job_id=queued.job_id,
        state="queued",
        restore_point_id=point_id,
        vm_name=plan.vm_name,
        datacenter=plan.datacenter,
        datastore=plan.datastore,
        folder=plan.folder,
        replaces=plan.replaces,
        bytes_needed=plan.bytes_needed,
        warnings=queued.warnings,
    )
