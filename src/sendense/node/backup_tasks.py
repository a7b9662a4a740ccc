"""Backup jobs on the node: one snapshot per VM, every disk copied in parallel,
the snapshot recorded before it is made and removed in every outcome (success,
failure, cancel). A removal that fails leaves the snapshot recorded for the
snapshot hunter; after a complete copy it is a warning, not a failed job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sendense.common.aio import run_all
from sendense.common.contract import (
    BackupStartRequest,
    DiskInventory,
    DiskProgress,
    NodeJobStatus,
    VcenterLogin,
)
from sendense.common.errors import (
    Conflict,
    InsufficientSpace,
    InvalidInput,
    SendenseError,
    VmBusy,
)
from sendense.common.logging import register_secret
from sendense.common.targets import NbdTarget, parse_targets
from sendense.node.config import NodeSettings
from sendense.node.engine import CopyTuning, DiskPlan, NodeLimits, copy_disk
from sendense.node.forwards import HubExports
from sendense.node.limits import Bandwidth, MemoryBudget, RestoreFirst
from sendense.node.snapshot_hunter import SnapshotHunter, SnapshotLedger, SnapshotRecord
from sendense.node.task_log import capture
from sendense.node.task_table import TaskTable, start_fields
from sendense.node.vmware import snapshots
from sendense.node.vmware.changes import ChangeIdInvalid, changed_areas, whole_disk
from sendense.node.vmware.connection import Vcenter
from sendense.node.vmware.datastore_connections import DatastoreConnections
from sendense.node.vmware.inventory import (
    backup_facts,
    datacenter_of,
    enable_cbt,
    find_vm,
    virtual_disks,
)
from sendense.node.vmware.readers import HttpsDatastoreReader
from sendense.node.vmware.sessions import VcenterSessions

log = logging.getLogger(__name__)


@dataclass
class NodeJob:
    status: NodeJobStatus
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = field(default=False)
    request: dict[str, Any] = field(default_factory=dict)  # start_fields of its start


class BackupTasks(TaskTable[NodeJob]):
    what = "job"

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        super().__init__()
        self.tuning = CopyTuning(
            chunk=settings.chunk_mib << 20,
            readers=settings.readers_per_disk,
            in_flight=settings.writes_in_flight,
            connections=settings.nbd_connections_per_disk,
            spread_from_rtt=settings.nbd_spread_from_rtt_ms / 1000,
        )
        self.limits = NodeLimits(
            MemoryBudget(settings.memory_budget_mib << 20),
            Bandwidth(settings.bandwidth_mb_s),
            RestoreFirst(
                settings.backup_reads_during_restore,
                settings.backup_mb_s_during_restore or None,  # 0: no rate
            ),
        )
        self.exports = HubExports(settings.data_dir, settings.hub_export_dir)
        self.snapshots = SnapshotLedger(settings.data_dir)
        self.hunter = SnapshotHunter(settings, self.snapshots, self.running_ids)
        self.sessions = VcenterSessions()  # kept between jobs (vmware/sessions.py)

    def running_ids(self) -> set[str]:
        return {j.status.job_id for j in self.active()}

    def start(self, req: BackupStartRequest) -> NodeJob:
        """A new job, or the job this same start made already (a repeat is safe)."""
        register_secret(req.vcenter_password.get_secret_value())
        parse_targets(req.nbd_targets)
        fields = start_fields(req)
        same = self.repeated(req.job_id, fields)
        if same is not None:
            log.info("job start repeated job=%s state=%s", req.job_id, same.status.state)
            return same
        running = self.active()
        for other in running:
            if other.status.vm_name == req.vm_name:
                raise VmBusy(req.vm_name, other.status.job_id)
        if len(running) >= self.settings.max_jobs:
            raise Conflict(f"the node runs {len(running)} jobs, its limit; retry later")
        status = NodeJobStatus(
            job_id=req.job_id, vm_name=req.vm_name, state="queued", started_at=time.time()
        )
        job = NodeJob(status, request=fields)
        self.add(req.job_id, job)
        job.task = asyncio.get_running_loop().create_task(self._run(job, req))
        return job

    async def _run(self, job: NodeJob, req: BackupStartRequest) -> None:
        with capture(job.status):
            log.info("job started job=%s vm=%s type=%s", req.job_id, req.vm_name, req.backup_type)
            await self.run(job, self._backup(job, req))

    def pinned_thumbprint(self, login: VcenterLogin) -> str | None:
        """The login's certificate pin, else the node's for its host (with or
        without the port)."""
        pins = self.settings.vcenter_thumbprints
        host = login.vcenter_host
        return login.vcenter_thumbprint or pins.get(host) or pins.get(host.rsplit(":", 1)[0])

    def vcenter(self, login: VcenterLogin) -> contextlib.AbstractAsyncContextManager[Vcenter]:
        """A session of this login, kept between the node's jobs (vmware/sessions.py):
        backups, restores and the API's vCenter calls share them."""
        password = login.vcenter_password.get_secret_value()
        register_secret(password)
        return self.sessions.use(
            login.vcenter_host,
            login.vcenter_user,
            password,
            self.pinned_thumbprint(login),
            self.settings.vcenter_insecure,
        )

    async def _backup(self, job: NodeJob, req: BackupStartRequest) -> None:
        job.status.phase = "snapshot"
        async with self.vcenter(req) as vc:
            self.hunter.remember(
                req.vcenter_host,
                req.vcenter_user,
                req.vcenter_password,
                self.pinned_thumbprint(req),
            )
            # Snapshots dead jobs left on any VM of this vCenter go first.
            job.status.warnings.extend(await self.hunter.hunt(vc, req.vcenter_host))
            await self._with_snapshot(job, req, vc)

    async def _with_snapshot(self, job: NodeJob, req: BackupStartRequest, vc: Vcenter) -> None:
        status = job.status
        vm = await asyncio.to_thread(find_vm, vc, req.vm_name)
        inventory = await asyncio.to_thread(backup_facts, vc, vm, req.vm_name)
        if req.vm_uuid and inventory.uuid and inventory.uuid != req.vm_uuid:
            raise Conflict(
                f"VM {req.vm_name!r} is now instance {inventory.uuid}, not {req.vm_uuid} as "
                "planned (deleted and re-created?): nothing read"
            )
        targets = parse_targets(req.nbd_targets)
        check_targets(targets, inventory.disks, req.vm_name)
        if not inventory.cbt_enabled and self.settings.enable_cbt:
            await asyncio.to_thread(enable_cbt, vm)
            status.warnings.append(
                "CBT was off and is now enabled: VMware tracks changes from this snapshot on, "
                "so this backup is a full"
            )
        quiesce = inventory.tools_running
        if not quiesce:
            status.warnings.append("VMware Tools not running: the snapshot is crash-consistent")
            log.warning("crash-consistent snapshot job=%s vm=%s", req.job_id, req.vm_name)
        name = snapshots.snapshot_name(req.job_id)
        record = SnapshotRecord(
            job_id=req.job_id,
            vcenter_host=req.vcenter_host,
            vm_name=req.vm_name,
            vm_uuid=inventory.uuid or None,
            snapshot=name,
            recorded_at=time.time(),
        )
        await asyncio.to_thread(self.snapshots.record, record)  # before vSphere makes it
        # The datastore's connections are opened while vSphere takes the snapshot.
        conns = DatastoreConnections(vc.host, vc.port, vc.ssl_context)
        conns.warm(self.tuning.readers * len(targets))
        try:
            await self._snapshot_and_copy(job, req, vc, vm, name, quiesce, conns)
        finally:
            await asyncio.to_thread(conns.close)

    async def _snapshot_and_copy(
        self,
        job: NodeJob,
        req: BackupStartRequest,
        vc: Vcenter,
        vm: Any,
        name: str,
        quiesce: bool,
        conns: DatastoreConnections,
    ) -> None:
        creating = asyncio.ensure_future(asyncio.to_thread(snapshots.create, vm, name, quiesce))
        try:
            snap = await asyncio.shield(creating)
        except asyncio.CancelledError:
            # The thread finishes the snapshot anyway (a quiesced one can take
            # minutes): wait for it and remove it, then give up.
            with contextlib.suppress(Exception):
                made = await creating
                await self._remove_snapshot(job, made, name)
            raise
        job.status.snapshot = name
        log.info("snapshot created job=%s snapshot=%s quiesced=%s", req.job_id, name, quiesce)
        try:
            await self._copy_all(job, req, vc, vm, snap, conns)
        except BaseException:
            # Runs on cancel too: the task is cancelled once, so this await completes.
            # The copy's error stays the job's error whatever the removal does.
            await self._remove_snapshot(job, snap, name)
            raise
        await self._remove_snapshot(job, snap, name)

    async def _remove_snapshot(self, job: NodeJob, snap: Any, name: str) -> None:
        """Remove the job's snapshot (its own long deadline) and forget its record; a
        failure is a warning on the job, and the record stays for the hunter."""
        job_id = job.status.job_id
        try:
            await asyncio.to_thread(
                snapshots.remove,
                snap,
                f"remove snapshot {name}",
                self.settings.snapshot_remove_timeout_s,
            )
        except Exception as exc:
            reason = exc.message if isinstance(exc, SendenseError) else type(exc).__name__
            log.warning("snapshot not removed job=%s snapshot=%s: %s", job_id, name, reason)
            job.status.warnings.append(
                f"snapshot {name} could not be removed ({reason}): the node retries later"
            )
            return
        await asyncio.to_thread(self.snapshots.forget, job_id)
        log.info("snapshot removed job=%s snapshot=%s", job_id, name)

    async def _copy_all(
        self,
        job: NodeJob,
        req: BackupStartRequest,
        vc: Vcenter,
        vm: Any,
        snap: Any,
        conns: DatastoreConnections,
    ) -> None:
        job.status.phase = "planning"
        frozen = {
            d.key: d for d in virtual_disks(await asyncio.to_thread(snapshots.disks_at, snap))
        }
        datacenter = await asyncio.to_thread(lambda: datacenter_of(vm).name)
        plans = []
        for target in parse_targets(req.nbd_targets):
            disk = frozen[target.disk_key]
            plan = await asyncio.to_thread(self._plan, req, vm, snap, target, disk)
            job.status.disks.append(plan.progress)
            plans.append((plan, disk))

        async def one(plan: DiskPlan, disk: DiskInventory) -> None:
            reader = HttpsDatastoreReader(
                vc.host,
                vc.port,
                vc.ssl_context,
                vc.session_cookie,
                datacenter,
                disk.datastore_path,
                connections=self.tuning.readers,
                shared=conns,
            )
            try:
                await copy_disk(plan, reader, self.tuning, self.limits)
                plan.progress.areas = plan.areas
                plan.progress.checksum_block = self.tuning.chunk
            finally:
                await reader.close()

        planned = sum(n for plan, _ in plans for _, n in plan.areas)
        targets = [plan.target for plan, _ in plans]
        log.info(
            "copy planned job=%s disks=%s bytes=%d",
            req.job_id,
            ",".join(f"{p.target.disk_key}:{p.progress.backup_type}" for p, _ in plans),
            planned,
        )
        budget = req.space_budget_bytes
        if budget is not None and planned > budget:
            raise InsufficientSpace(
                f"the copy needs {planned} bytes; the hub's repository has room for {budget} "
                "(free space less its reserve): nothing was copied"
            )
        uris = await self.exports.open(targets)
        try:
            for plan, _ in plans:
                plan.uri = uris[plan.target.disk_key]
                plan.path = self.exports.path_key(plan.uri)
            job.status.phase = "copying"
            await run_all(one(plan, disk) for plan, disk in plans)
        finally:
            await self.exports.close(targets)
        job.status.phase = "finishing"
        log.info("copy done job=%s", req.job_id)

    def _plan(
        self, req: BackupStartRequest, vm: Any, snap: Any, target: NbdTarget, disk: DiskInventory
    ) -> DiskPlan:
        progress = DiskProgress(disk_key=disk.key, backup_type="full", change_id=disk.change_id)
        previous = req.previous_change_ids.get(str(disk.key))
        wants_incremental = req.backup_type == "incremental"
        if wants_incremental and previous and disk.change_id:
            try:
                areas = changed_areas(vm, snap, disk.key, disk.capacity_bytes, previous)
                progress.backup_type = "incremental"
                return DiskPlan(target, disk.capacity_bytes, areas, progress)
            except ChangeIdInvalid as exc:
                progress.full_reason = exc.message
                log.warning("full instead of incremental job=%s: %s", req.job_id, exc.message)
        elif wants_incremental:
            progress.full_reason = (
                "no previous change ID for this disk" if not previous else "CBT is off on the VM"
            )
        if disk.change_id:
            areas = changed_areas(vm, snap, disk.key, disk.capacity_bytes, "*")
        else:
            areas = whole_disk(disk.capacity_bytes)
        overlay = wants_incremental and bool(previous)
        return DiskPlan(target, disk.capacity_bytes, areas, progress, zero_gaps=overlay)


def check_targets(targets: list[NbdTarget], disks: list[DiskInventory], vm_name: str) -> None:
    keys = {d.key for d in disks}
    for target in targets:
        if target.disk_key not in keys:
            raise InvalidInput(
                f"target key {target.disk_key} is not a disk of VM {vm_name!r} "
                f"(its disks: {', '.join(str(k) for k in sorted(keys))})"
            )
