"""Restore jobs on the node: a restore point, served by the hub over NBD, becomes
a VM in vCenter.

`start` checks everything first (vmware/restore.py `plan`) and answers a refusal
at once, with nothing made. The job then replaces the old VM when asked to
(powered off only), creates the VM with the recorded controllers and disks,
uploads each disk's flat file (NBD reads pipelined into one HTTPS PUT per disk,
all disks at once) and powers the VM on if asked. A job that fails or is
cancelled destroys the VM it created, never another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vmodl

from sendense.common.aio import run_all
from sendense.common.contract import (
    RestoreCheckRequest,
    RestoreCheckResponse,
    RestoreDiskProgress,
    RestoreJobStatus,
    RestoreStartRequest,
)
from sendense.common.errors import Conflict, SendenseError, VmBusy
from sendense.common.logging import register_secret
from sendense.common.progress import Meter
from sendense.common.targets import parse_targets
from sendense.nbd.client import Data, NbdClient
from sendense.nbd.errors import NbdError
from sendense.nbd.protocol import CMD_READ, READ_BUFFER
from sendense.node.backup_tasks import BackupTasks
from sendense.node.config import NodeSettings
from sendense.node.task_log import capture
from sendense.node.task_table import TaskTable, start_fields
from sendense.node.vmware import restore
from sendense.node.vmware.connection import Vcenter
from sendense.node.vmware.inventory import inventory_path

log = logging.getLogger(__name__)


@dataclass
class RestoreJob:
    status: RestoreJobStatus
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = field(default=False)
    request: dict[str, Any] = field(default_factory=dict)  # start_fields of its start


def _pieces(size: int, chunk: int) -> Iterator[tuple[int, int]]:
    for offset in range(0, size, chunk):
        yield offset, min(chunk, size - offset)


async def pump(
    nbd: NbdClient, upload: restore.DatastoreUpload, meter: Meter, chunk: int, in_flight: int
) -> None:
    """Read the export in order, `in_flight` reads ahead, and send each piece on.
    A hole reads as zeroes and is sent as zeroes: an upload has no holes. The
    upload's blocking sends run in a thread of its own, not the event loop's
    shared pool, where ten backups' vCenter calls would queue ahead of them."""
    loop = asyncio.get_running_loop()
    sender = ThreadPoolExecutor(1, thread_name_prefix="datastore-upload")
    try:
        await _pump(nbd, upload, meter, _pieces(upload.size, chunk), in_flight, loop, sender)
    finally:
        sender.shutdown(wait=False)  # a send left by a cancel ends as the upload closes


async def _pump(
    nbd: NbdClient,
    upload: restore.DatastoreUpload,
    meter: Meter,
    pieces: Iterator[tuple[int, int]],
    in_flight: int,
    loop: asyncio.AbstractEventLoop,
    sender: ThreadPoolExecutor,
) -> None:
    reads: deque[asyncio.Future[Data]] = deque()

    def refill() -> None:
        while len(reads) < in_flight and (piece := next(pieces, None)) is not None:
            reads.append(nbd.submit(CMD_READ, *piece))

    refill()
    try:
        while reads:
            data = await reads.popleft()
            refill()
            await loop.run_in_executor(sender, upload.send, data)
            meter.advance(len(data))
    finally:
        for read in reads:
            if read.done() and not read.cancelled():
                read.exception()  # retrieved: a lost connection failed them all
            else:
                read.cancel()


class RestoreTasks(TaskTable[RestoreJob]):
    what = "restore job"

    def __init__(self, settings: NodeSettings, backups: BackupTasks) -> None:
        self.settings = settings
        self.backups = backups
        super().__init__()
        self.chunk = settings.chunk_mib << 20
        self.in_flight = settings.writes_in_flight
        # What a disk's upload holds: its reads ahead, the piece being sent and
        # the NBD reply buffer. It counts in the node's memory budget, as a
        # backup's stream does, but is taken at once (limits.py MemoryBudget).
        self.stream_bytes = (self.in_flight + 1) * self.chunk + READ_BUFFER

    async def check(self, req: RestoreCheckRequest) -> RestoreCheckResponse:
        """What a restore would do, or why it may not: changes nothing."""
        self._refuse_busy(req.vm_name)
        async with self.backups.vcenter(req) as vc:
            return (await asyncio.to_thread(restore.plan, vc, req)).answer

    def _refuse_busy(self, vm_name: str) -> None:
        active = [(j.status.job_id, j.status.vm_name) for j in self.active()]
        active += [(j.status.job_id, j.status.vm_name) for j in self.backups.active()]
        for other, name in active:
            if name == vm_name:
                raise VmBusy(vm_name, other, f"VM {vm_name!r} has job {other} running on the node")
        if len(active) >= self.settings.max_jobs:
            raise Conflict(f"the node runs {self.settings.max_jobs} jobs, its limit; retry later")

    async def start(self, req: RestoreStartRequest) -> RestoreJob:
        register_secret(req.vcenter_password.get_secret_value())
        fields = start_fields(req)
        same = self.repeated(req.job_id, fields)
        if same is not None:  # the hub repeated a start whose answer it lost
            log.info("restore start repeated job=%s state=%s", req.job_id, same.status.state)
            return same
        self._refuse_busy(req.vm_name)
        status = RestoreJobStatus(
            job_id=req.job_id, vm_name=req.vm_name, state="queued", started_at=time.time()
        )
        job = RestoreJob(status, request=fields)
        self.add(req.job_id, job)  # holds the name while the check runs
        # The session is the job's until it ends: the plan's objects belong to it.
        session = contextlib.AsyncExitStack()
        try:
            vc = await session.enter_async_context(self.backups.vcenter(req))
            target = await asyncio.to_thread(restore.plan, vc, req)
        except BaseException as exc:
            del self.jobs[req.job_id]
            await session.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        job.task = asyncio.get_running_loop().create_task(self._run(job, req, vc, target, session))
        return job

    def explain(self, exc: Exception) -> str | None:
        if isinstance(exc, vmodl.MethodFault):  # a fault outside a task: a VM gone, say
            return f"vCenter: {getattr(exc, 'msg', None) or type(exc).__name__}"
        return None

    async def _run(
        self,
        job: RestoreJob,
        req: RestoreStartRequest,
        vc: Vcenter,
        target: restore.RestoreTarget,
        session: contextlib.AsyncExitStack,
    ) -> None:
        async def work() -> None:
            async with session:  # a failure goes through it: that session is not kept
                await self._restore(job, req, vc, target)

        try:
            with capture(job.status):
                log.info(
                    "restore started job=%s vm=%s datastore=%s replaces=%s",
                    req.job_id,
                    req.vm_name,
                    target.answer.datastore,
                    target.answer.replaces,
                )
                await self.run(job, work())
        finally:
            await session.aclose()  # done already, unless the work never started

    async def _restore(
        self, job: RestoreJob, req: RestoreStartRequest, vc: Vcenter, target: restore.RestoreTarget
    ) -> None:
        status = job.status
        if target.existing is not None:
            await asyncio.to_thread(restore.destroy, target.existing)
            status.replaced = True
            log.info("VM replaced: old one destroyed job=%s vm=%s", req.job_id, req.vm_name)
        try:
            made = await asyncio.to_thread(restore.create_vm, target, req.vm_name, req.layout)
        except SendenseError as exc:
            if status.replaced:
                raise SendenseError(f"{exc.message} (the VM of that name is gone)") from exc
            raise
        try:
            status.vm_path = await asyncio.to_thread(inventory_path, made)
            log.info("VM created job=%s path=%s", req.job_id, status.vm_path)
            await self._write_disks(job, req, vc, target, made)
        except BaseException:
            # Runs on cancel too: the task is cancelled once, so this await completes.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(restore.destroy, made)
                log.warning("VM of the failed restore destroyed job=%s", req.job_id)
            raise
        if req.power_on:
            try:
                await asyncio.to_thread(restore.power_on, made)
                status.powered_on = True
            except SendenseError as exc:  # the VM and its data are there: say so, keep it
                status.warnings.append(f"restored, but not powered on: {exc.message}")
                log.warning("power on failed job=%s: %s", req.job_id, exc.message)

    async def _write_disks(
        self,
        job: RestoreJob,
        req: RestoreStartRequest,
        vc: Vcenter,
        target: restore.RestoreTarget,
        vm: Any,
    ) -> None:
        made = await asyncio.to_thread(restore.created_disks, vm, req.layout)
        targets = parse_targets(req.nbd_targets)
        datacenter = target.answer.datacenter
        for disk in req.layout.disks:
            if made[disk.key].key != disk.key:
                job.status.warnings.append(
                    f"vCenter gave disk {disk.key} the key {made[disk.key].key}"
                )
            job.status.disks.append(
                RestoreDiskProgress(
                    disk_key=disk.key,
                    datastore_path=made[disk.key].datastore_path,
                    bytes_total=disk.capacity_bytes,
                )
            )
        sources = await self.backups.exports.open(targets)
        named = {t.disk_key: t.uri for t in targets}
        try:
            # The node's backups yield while the disks are copied (limits.py).
            with self.backups.limits.priority.restoring(f"restore job={req.job_id}"):
                await run_all(
                    self._write_disk(vc, datacenter, sources[p.disk_key], p, named[p.disk_key])
                    for p in job.status.disks
                )
        finally:
            await self.backups.exports.close(targets)
        log.info(
            "restore disks written job=%s bytes=%d",
            req.job_id,
            sum(p.bytes_done for p in job.status.disks),
        )

    async def _write_disk(
        self,
        vc: Vcenter,
        datacenter: str,
        source: str,
        progress: RestoreDiskProgress,
        target: str,
    ) -> None:
        """`source`: where this node dials the hub's export `target` (its name in errors)."""
        try:
            await self._upload(vc, datacenter, source, progress)
        except NbdError as exc:
            if source == target:
                raise
            raise SendenseError(f"target {target}: {exc}") from None

    async def _upload(
        self, vc: Vcenter, datacenter: str, source: str, progress: RestoreDiskProgress
    ) -> None:
        assert progress.datastore_path is not None
        upload = restore.DatastoreUpload(
            vc.host,
            vc.port,
            vc.ssl_context,
            vc.session_cookie,
            datacenter,
            progress.datastore_path,
            progress.bytes_total,
        )
        what = f"restore of disk {progress.disk_key}"
        try:
            async with (
                self.backups.limits.budget.hold(self.stream_bytes, what, at_once=True),
                await NbdClient.connect(source) as nbd,
            ):
                if nbd.info.size < upload.size:
                    raise SendenseError(
                        f"disk {progress.disk_key}: {source} holds {nbd.info.size} bytes, "
                        f"the disk {upload.size}"
                    )
                await asyncio.to_thread(upload.open)
                await pump(nbd, upload, Meter(progress), self.chunk, self.in_flight)
                await asyncio.to_thread(upload.finish)
        finally:
            await asyncio.to_thread(upload.close)
        progress.eta_seconds = 0.0
