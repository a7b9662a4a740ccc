"""The node's record of its jobs' snapshots, and the hunter that removes those of
dead jobs (Veeam calls it a snapshot hunter).

Each backup records its snapshot (vCenter, VM name and instance UUID, snapshot
name, job id) in `<data_dir>/snapshots.json` before it asks vSphere to make it,
and forgets it only once the snapshot is gone. An entry whose job does not run in
this node process is a dead job's: a node killed mid-backup, or a removal that
failed. The hunter removes those snapshots, for one vCenter at a time, whenever it
holds a session there: at every backup start for that vCenter, and periodically
with the most recent login that worked, kept in memory only (the node has no
database and gets vCenter credentials only with the hub's requests; nothing of a
login is written to disk). It never touches a snapshot it did not record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from sendense.common.contract import SnapshotHuntResponse
from sendense.common.errors import SendenseError
from sendense.node.config import NodeSettings
from sendense.node.vmware import snapshots
from sendense.node.vmware.connection import Vcenter, VcenterError, connect
from sendense.node.vmware.inventory import vms_named

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotRecord:
    job_id: str
    vcenter_host: str
    vm_name: str
    vm_uuid: str | None
    snapshot: str
    recorded_at: float


class SnapshotLedger:
    """The state file: a JSON list of records, replaced atomically (temp file,
    fsync, rename, fsync of the directory), mode 0600. Safe across threads."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "snapshots.json"
        self._lock = threading.Lock()
        self._records = self._load()

    def _load(self) -> dict[str, SnapshotRecord]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            return {r["job_id"]: SnapshotRecord(**r) for r in json.loads(raw)}
        except (ValueError, TypeError, KeyError) as exc:
            # Written atomically, so only a hand edit gets here: keep the file for
            # the operator and start anew rather than stop every backup.
            aside = self.path.with_suffix(f".bad-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("unreadable snapshot records moved to %s: %s", aside, exc)
            return {}

    def records(self) -> list[SnapshotRecord]:
        with self._lock:
            return list(self._records.values())

    def record(self, record: SnapshotRecord) -> None:
        with self._lock:
            self._records[record.job_id] = record
            self._write()

    def forget(self, job_id: str) -> None:
        with self._lock:
            if self._records.pop(job_id, None) is not None:
                self._write()

    def _write(self) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = json.dumps([asdict(r) for r in self._records.values()], indent=1)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".snapshots-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True)
class _Login:
    user: str
    password: SecretStr
    thumbprint: str | None


def _explain(exc: Exception) -> str:
    return exc.message if isinstance(exc, SendenseError) else type(exc).__name__


class SnapshotHunter:
    """Removes the recorded snapshots of jobs that do not run (see the module doc).
    `running` answers the ids of the jobs this node process runs; it is called on
    the event loop, as every async method here is."""

    def __init__(
        self, settings: NodeSettings, ledger: SnapshotLedger, running: Callable[[], set[str]]
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.running = running
        self._logins: dict[str, _Login] = {}
        self._claimed: set[str] = set()

    def remember(self, host: str, user: str, password: SecretStr, thumbprint: str | None) -> None:
        """The most recent login that worked for a vCenter (memory only)."""
        self._logins[host] = _Login(user, password, thumbprint)

    def _dead(self, host: str) -> list[SnapshotRecord]:
        # Records first, running jobs second: a job is in the running set before it
        # records its snapshot, so a record read here is never a live job's taken for dead.
        records = [r for r in self.ledger.records() if r.vcenter_host == host]
        running = self.running()
        return [r for r in records if r.job_id not in running and r.job_id not in self._claimed]

    async def hunt(self, vc: Vcenter, host: str) -> list[str]:
        """Remove the dead jobs' snapshots on this vCenter through an open session;
        answers a warning per snapshot that could not be removed (kept for a retry)."""
        dead = self._dead(host)
        if not dead:
            return []
        self._claimed.update(r.job_id for r in dead)
        try:
            return await asyncio.to_thread(self._remove_all, vc, dead)
        finally:
            self._claimed.difference_update(r.job_id for r in dead)

    def _remove_all(self, vc: Vcenter, dead: list[SnapshotRecord]) -> list[str]:
        warnings = []
        for record in dead:
            try:
                self._remove(vc, record)
            except Exception as exc:
                log.warning(
                    "leftover snapshot not removed vm=%s snapshot=%s job=%s: %s",
                    record.vm_name,
                    record.snapshot,
                    record.job_id,
                    _explain(exc),
                )
                warnings.append(
                    f"leftover snapshot {record.snapshot} of VM {record.vm_name} (job "
                    f"{record.job_id}) could not be removed: {_explain(exc)}; the node retries"
                )
            else:
                self.ledger.forget(record.job_id)
        return warnings

    def _remove(self, vc: Vcenter, record: SnapshotRecord) -> None:
        vm = self._find_vm(vc, record)
        snap = None if vm is None else snapshots.named(vm, record.snapshot)
        if vm is None or snap is None:
            log.info(
                "leftover snapshot already gone vm=%s snapshot=%s job=%s",
                record.vm_name,
                record.snapshot,
                record.job_id,
            )
            return
        log.warning(
            "removing leftover snapshot of a dead job vm=%s snapshot=%s job=%s",
            record.vm_name,
            record.snapshot,
            record.job_id,
        )
        snapshots.remove(
            snap,
            f"remove leftover snapshot {record.snapshot} of {record.vm_name}",
            self.settings.snapshot_remove_timeout_s,
        )

    @staticmethod
    def _find_vm(vc: Vcenter, record: SnapshotRecord) -> Any | None:
        """The recorded VM (renamed or not), None when it no longer exists (its
        snapshots went with it)."""
        if record.vm_uuid:
            return vc.content.searchIndex.FindByUuid(None, record.vm_uuid, True, True)
        named = vms_named(vc, record.vm_name)
        if len(named) > 1:
            raise VcenterError(f"{len(named)} VMs are named {record.vm_name!r}")
        return named[0] if named else None

    async def hunt_with(
        self, host: str, user: str, password: SecretStr, thumbprint: str | None
    ) -> SnapshotHuntResponse:
        """The hub's periodic call: remember its login for `host` (a restarted node
        has none until then), and hunt there now if a dead job's snapshot is
        recorded; no vCenter session otherwise."""
        login = self._logins[host] = _Login(user, password, thumbprint)
        if not self._dead(host):
            return SnapshotHuntResponse(pending=0)
        vc = await asyncio.to_thread(
            connect,
            host,
            login.user,
            login.password.get_secret_value(),
            login.thumbprint,
            self.settings.vcenter_insecure,
        )
        try:
            warnings = await self.hunt(vc, host)
        finally:
            await asyncio.to_thread(vc.close)
        return SnapshotHuntResponse(pending=len(self._dead(host)), warnings=warnings)

    async def hunt_everywhere(self) -> None:
        """One round of the periodic hunt: every vCenter with dead jobs' snapshots
        and a login remembered since this process started."""
        hosts = {r.vcenter_host for r in self.ledger.records()}
        for host in sorted(hosts):
            login = self._logins.get(host)
            if login is None or not self._dead(host):
                continue
            try:
                vc = await asyncio.to_thread(
                    connect,
                    host,
                    login.user,
                    login.password.get_secret_value(),
                    login.thumbprint,
                    self.settings.vcenter_insecure,
                )
            except Exception as exc:
                log.warning("snapshot hunt cannot log in to vCenter %s: %s", host, _explain(exc))
                continue
            try:
                await self.hunt(vc, host)
            finally:
                await asyncio.to_thread(vc.close)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.snapshot_hunt_interval_s)
            try:
                await self.hunt_everywhere()
            except Exception:
                log.exception("snapshot hunt failed")
