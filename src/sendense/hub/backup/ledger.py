"""The hub's side of one backup job: open write exports for a VM's disks, then
finish (check, mark complete in one transaction) or fail (remove everything).

Write order: rows (incomplete) -> files -> ports -> qemu-nbd; finish goes
data -> stop servers -> `qemu-img check` -> the one transaction that says
`complete`. Whatever a crash interrupts is found by `reconcile` at start-up.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from sendense.common.checksum import pack_areas
from sendense.common.contract import VmLayout
from sendense.common.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    SendenseError,
    TaskNotRunning,
    Unavailable,
    WrongTaskKind,
)
from sendense.common.names import export_name, validate_vm_name
from sendense.common.targets import NbdTarget
from sendense.hub.backup import identity
from sendense.hub.backup.disks import (
    BACKUP_TYPES,
    DiskResult,
    DiskSpec,
    PreparedDisk,
    PreparedJob,
    check_areas,
    validate_job,
)
from sendense.hub.backup.planning import DiskPlan, plan_disk, upsert_disks
from sendense.hub.db.database import Database
from sendense.hub.db.models import (
    ACTIVE_JOB_STATES,
    Job,
    JobState,
    PointStatus,
    RestorePoint,
    RestorePointDisk,
    TaskKind,
    Vm,
    utcnow,
)
from sendense.hub.nodes.registry import NodeInfo
from sendense.hub.repository.exports import ExportManager
from sendense.hub.repository.logins import NodeLogin, node_login
from sendense.hub.repository.ports import PortAllocator
from sendense.hub.repository.repositories import (
    RepositoryInfo,
    RepositoryService,
    supports_direct_io,
)
from sendense.hub.tasks.vm_lock import lock_vm, unlock_vm

log = logging.getLogger(__name__)


class BackupLedger:
    def __init__(
        self,
        db: Database,
        repos: RepositoryService,
        ports: PortAllocator,
        exports: ExportManager,
        targets_host: str,
        cache: str,
    ) -> None:
        self.db = db
        self.repos = repos
        self.ports = ports
        self.exports = exports
        self.targets_host = targets_host
        self.cache = cache

    def prepare(
        self,
        vm_name: str,
        disks: list[DiskSpec],
        backup_type: str = "auto",
        repository: str | None = None,
        job_id: str | None = None,
        layout: VmLayout | None = None,
        max_chain: int | None = None,
        vcenter: str | None = None,
        vm_uuid: str | None = None,
        node: NodeInfo | None = None,
    ) -> PreparedJob:
        """Open exports for a new job, or for `job_id` reserved by `reserve` (its VM
        row is the one `identify` chose); `layout` (the VM's disks and controllers)
        is kept with the restore point. A new job names its VM by name, and by the
        vCenter it is on and its instance UUID when the caller knows them."""
        validate_job(vm_name, disks, backup_type)
        try:
            repo = self.repos.get(repository)
        except SendenseError as exc:
            if job_id is not None:
                self.fail(job_id, exc.message)
            raise
        with self.db.session() as s:
            if job_id is None:
                vm = identity.resolve(s, vm_name, identity.vcenter_id(s, vcenter), vm_uuid)
            else:
                vm = s.get_one(Vm, s.get_one(Job, job_id).vm_id)
            upsert_disks(s, vm, disks)
            if job_id is None:
                job = Job(vm_id=vm.id, backup_type=backup_type)
                s.add(job)
                s.flush()
                lock_vm(s, vm, job.id)
            else:
                job = s.get_one(Job, job_id)
                if job.state != JobState.QUEUED:
                    raise TaskNotRunning(job_id, f"job {job_id} is {job.state.value}, not queued")
            job.state = JobState.PREPARING
            job.started_at = utcnow()
            point = RestorePoint(
                vm_id=vm.id,
                job_id=job.id,
                repository_id=repo.id,
                layout=layout.model_dump(mode="json") if layout is not None else None,
            )
            s.add(point)
            s.flush()
            ordered = sorted(disks, key=lambda d: d.key)
            plans = [plan_disk(s, vm, point, d, backup_type, repo.id, max_chain) for d in ordered]
            job_id, vm_id, point_id = job.id, vm.id, point.id
        try:
            # Before any file exists: a full needs what its disks hold, an
            # incremental at least its parent's size (the node checks its exact
            # plan against the room left before it copies).
            required = sum(plan.estimated_bytes for plan in plans)
            self.repos.ensure_fits(repo, required, job_id)
        except SendenseError as exc:
            self.fail(job_id, exc.message)
            raise
        try:
            prepared = self._open(repo, job_id, vm_name, plans, node_login(node))
        except BaseException as exc:
            self.fail(job_id, f"could not open exports: {exc}")
            raise
        with self.db.session() as s:
            moved = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.PREPARING)
                .values(state=JobState.RUNNING)
            )
        if moved.rowcount == 0:  # type: ignore[attr-defined]
            self.fail(job_id, "ended while its exports opened")  # cancelled: files go
            raise TaskNotRunning(job_id, f"job {job_id} ended while its exports opened")
        result = PreparedJob(job_id, vm_id, point_id, prepared)
        log.info("job prepared job=%s vm=%s targets=%s", job_id, vm_name, result.nbd_targets)
        return result

    def reserve(
        self,
        vm_name: str,
        backup_type: str,
        vcenter: str | None = None,
        started_by: str | None = None,
        parent_id: str | None = None,
    ) -> str:
        """A queued job that holds the lock of the VM known as `vm_name` on `vcenter`
        (a new row if none): a second request gets 409 at once. `identify` moves
        the job to another row if the inventory shows another VM."""
        validate_vm_name(vm_name)
        if backup_type not in BACKUP_TYPES:
            raise InvalidInput(f"backup type {backup_type!r}: use one of {', '.join(BACKUP_TYPES)}")
        with self.db.session() as s:
            vm = identity.resolve(s, vm_name, identity.vcenter_id(s, vcenter), None)
            job = Job(
                vm_id=vm.id,
                backup_type=backup_type,
                state=JobState.QUEUED,
                started_by=started_by,
                parent_id=parent_id,
            )
            s.add(job)
            s.flush()
            lock_vm(s, vm, job.id)
            return job.id

    def room(self, prepared: PreparedJob) -> int:
        """The bytes the job's repository can still take (free less the reserve
        and what the other backups running on it may still write)."""
        with self.db.session() as s:
            repo_id = s.get_one(RestorePoint, prepared.restore_point_id).repository_id
        return self.repos.room(self.repos.get(repo_id), prepared.job_id)

    def planned(self, prepared: PreparedJob, sizes: dict[int, int]) -> None:
        """The node's exact plan, bytes per disk: each disk's reservation on the
        repository becomes it (it replaces a full's estimate; an incremental,
        which reserved nothing until now, reserves it)."""
        with self.db.session() as s:
            for key, size in sizes.items():
                s.execute(
                    update(RestorePointDisk)
                    .where(
                        RestorePointDisk.restore_point_id == prepared.restore_point_id,
                        RestorePointDisk.disk_key == key,
                    )
                    .values(reserved_bytes=size)
                )

    def identify(self, job_id: str, vm_name: str, vcenter: str, vm_uuid: str) -> str:
        """The VM row (its id) the reserved `job_id` backs up, now that the VM's
        instance UUID is known: see identity.identify."""
        try:
            with self.db.session() as s:
                vc_id = identity.vcenter_id(s, vcenter)
                return identity.identify(s, job_id, vm_name, vc_id, vm_uuid).id
        except IntegrityError as exc:
            # Another task recorded this VM's UUID on its own new row meanwhile.
            raise Conflict(
                f"VM {vm_name!r} ({vm_uuid}) is being backed up by another task"
            ) from exc

    def parent_change_ids(self, prepared: PreparedJob) -> dict[int, str]:
        """Per incremental disk, the change ID its parent recorded."""
        parents = {d.parent_id: d.key for d in prepared.disks if d.parent_id}
        if not parents:
            return {}
        with self.db.session() as s:
            rows = s.scalars(select(RestorePointDisk).where(RestorePointDisk.id.in_(parents)))
            return {parents[r.id]: r.change_id for r in rows if r.change_id}

    def _open(
        self,
        repo: RepositoryInfo,
        job_id: str,
        vm_name: str,
        plans: list[DiskPlan],
        writer: NodeLogin,
    ) -> list[PreparedDisk]:
        """Each disk's export, a socket only `writer` (the job's node) reaches."""
        cache = self.cache
        if cache == "auto":
            cache = "none" if supports_direct_io(repo.path) else "writeback"
        prepared = []
        for index, plan in enumerate(plans):
            image = self.repos.create_image(repo, plan.file_path, plan.capacity, plan.parent_file)
            port = self.ports.allocate(f"job:{job_id}", job_id, plan.key)
            name = export_name(vm_name, index)
            self.exports.start(job_id, plan.key, port, image, name, cache, writer)
            target = NbdTarget(plan.key, self.targets_host, port, name)
            prepared.append(
                PreparedDisk(plan.key, plan.backup_type, plan.file_path, plan.parent_id, target)
            )
        return prepared

    def finish(
        self,
        job_id: str,
        results: dict[int, DiskResult],
        time_split: dict[str, Any] | None = None,
    ) -> str:
        """Stop the exports, check every image, then mark all complete in one transaction
        (with `time_split`, where the copy's time went, when the caller knows it).

        Anything that goes wrong on the way fails the job (files removed, VM unlocked):
        a job never stays `finalizing`."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            _require_backup(job)
            if job.state != JobState.RUNNING:
                raise TaskNotRunning(job_id, f"job {job_id} is {job.state.value}, not running")
            job.state = JobState.FINALIZING
            point = s.scalars(select(RestorePoint).where(RestorePoint.job_id == job_id)).one()
            repo_id = point.repository_id
            files = {d.disk_key: d.file_path for d in point.disks}
        try:
            return self._finalize(job_id, repo_id, files, results, time_split)
        except BaseException as exc:
            reason = exc.message if isinstance(exc, SendenseError) else repr(exc)
            self.fail(job_id, f"finishing failed: {reason}")
            raise

    def _finalize(
        self,
        job_id: str,
        repo_id: str,
        files: dict[int, str],
        results: dict[int, DiskResult],
        time_split: dict[str, Any] | None,
    ) -> str:
        if set(results) != set(files):
            # A disk without a result was never confirmed written: never call it complete.
            raise InvalidInput(
                f"job {job_id} has disks {sorted(files)}, the results name {sorted(results)}"
            )
        repo = self.repos.get(repo_id)
        untrusted = self.exports.stop_job(job_id)
        if untrusted:
            raise SendenseError(
                "; ".join(f"disk {key}: {why}" for key, why in sorted(untrusted.items()))
                + ": what was written cannot be trusted"
            )
        sizes: dict[int, int] = {}
        for key, relative in files.items():
            check = self.repos.check(repo, relative)
            if not check.clean:
                raise SendenseError(
                    f"disk {key}: qemu-img check exit {check.returncode}: {check.output}"
                )
            sizes[key] = self.repos.resolve(repo, relative).stat().st_blocks * 512
        with self.db.session() as s:
            point = s.scalars(select(RestorePoint).where(RestorePoint.job_id == job_id)).one()
            for disk in point.disks:
                check_areas(disk.disk_key, disk.virtual_size, results[disk.disk_key])
            # Only a job still finalizing may complete: a concurrent fail() wins.
            claimed = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.FINALIZING)
                .values(state=JobState.COMPLETE, finished_at=utcnow(), time_split=time_split)
            )
            if getattr(claimed, "rowcount", 0) != 1:
                raise TaskNotRunning(job_id, f"job {job_id} was failed while it was being finished")
            self.ports.release_job(s, job_id)
            for disk in point.disks:
                result = results[disk.disk_key]
                disk.change_id = result.change_id
                disk.data_bytes = result.data_bytes
                disk.checksum = result.checksum
                disk.duration_s = result.duration_s
                disk.rate_bytes_per_s = result.rate_bytes_per_s
                if result.areas is not None and result.checksum_block:
                    disk.areas = pack_areas(result.areas)
                    disk.checksum_block = result.checksum_block
                if result.full_reason:
                    # Read whole but written onto the planned overlay: parent_id
                    # stays, so chain limits and retention still count it in its chain.
                    disk.backup_type = "full"
                    disk.full_reason = result.full_reason
                disk.file_size = sizes[disk.disk_key]
                disk.status = PointStatus.COMPLETE
            point.status = PointStatus.COMPLETE
            point.completed_at = utcnow()
            unlock_vm(s, job_id)
            point_id = point.id
        log.info("job complete job=%s restore_point=%s", job_id, point_id)
        return point_id

    def fail_backup(self, job_id: str, reason: str) -> None:
        """`fail` for a caller outside the hub: only a backup, never another kind of
        task (failing a prune would free its VM's lock in the middle of a merge)."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            _require_backup(job)
        self.fail(job_id, reason)

    def fail(self, job_id: str, reason: str) -> None:
        """Stop exports, free ports, remove the job's unfinished files and rows; never
        touches a complete restore point."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            # Claim it first: a finish() running at the same time can no longer
            # mark the point complete once its files are being removed.
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(ACTIVE_JOB_STATES))
                .values(state=JobState.FAILED, error=reason, finished_at=utcnow())
            )
        self.exports.stop_job(job_id)
        with self.db.session() as s:
            points = s.scalars(
                select(RestorePoint).where(
                    RestorePoint.job_id == job_id, RestorePoint.status != PointStatus.COMPLETE
                )
            ).all()
            doomed = [(p.id, p.repository_id, [d.file_path for d in p.disks]) for p in points]
        # Files before rows: a crash in between leaves a row whose file is gone,
        # which the next clean-up handles; the other order would leave a file
        # nothing points to. A point whose repository is not mounted keeps its rows
        # (its files are out of reach): the next start-up removes both.
        kept = self.remove_files(doomed)
        with self.db.session() as s:
            self.ports.release_job(s, job_id)
            for point in s.scalars(
                select(RestorePoint).where(
                    RestorePoint.job_id == job_id, RestorePoint.status != PointStatus.COMPLETE
                )
            ):
                if point.id in kept:
                    continue
                for disk in point.disks:
                    s.delete(disk)
                s.delete(point)
            unlock_vm(s, job_id)
        log.warning("job failed job=%s reason=%s", job_id, reason)

    def remove_files(self, points: list[tuple[str, str, list[str]]]) -> set[str]:
        """Remove unfinished points' files, given as (point id, repository id, files);
        the ids of those whose repository is not mounted, left as they are."""
        kept = set()
        for point_id, repo_id, files in points:
            try:
                repo = self.repos.get(repo_id)
            except Unavailable as exc:
                log.warning("unfinished restore point %s kept: %s", point_id, exc.message)
                kept.add(point_id)
                continue
            for relative in files:
                self.repos.remove_image(repo, relative)
        return kept


def _require_backup(job: Job) -> None:
    if job.kind != TaskKind.BACKUP:
        raise WrongTaskKind(job.id, job.kind.value, TaskKind.BACKUP.value)
