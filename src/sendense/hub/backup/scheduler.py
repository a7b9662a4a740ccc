"""Schedules: each policy's cron expression runs auto backups of its VMs through the
job queue (so the concurrency limit holds), then prunes each VM by the policy.

A policy is due when its schedule fired since its last run. The last run is
recorded before the work starts, so a hub that was down over several slots runs
once when it comes back, not once per missed slot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from sqlalchemy import select

from sendense.common.errors import SendenseError
from sendense.hub.backup.runner import BackupRunner
from sendense.hub.db.models import ACTIVE_JOB_STATES as ACTIVE
from sendense.hub.db.models import Job, JobState, TaskKind, Vm
from sendense.hub.nodes.client import NodeConnector
from sendense.hub.nodes.registry import NodeInfo
from sendense.hub.retention.policies import PolicyInfo, PolicyService, next_run
from sendense.hub.retention.prune import PruneService
from sendense.hub.tasks.catalog import TaskCatalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduleInfo:
    policy: str
    schedule: str
    last_run_at: datetime | None
    next_run_at: datetime
    vms: list[str]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        backups: BackupRunner,
        policies: PolicyService,
        prune: PruneService,
        nodes: NodeConnector,
        *,
        node_status: Callable[[], list[NodeInfo]],
        zone: tzinfo,
        node_timeout: float,
        clock: Callable[[], datetime] = utc_now,
        job_poll: float = 1.0,
    ) -> None:
        self.backups = backups
        self.db = backups.db
        self.tasks = TaskCatalog(self.db)
        self.policies = policies
        self.prune = prune
        self.nodes = nodes
        self.node_status = node_status
        self.zone = zone
        self.node_timeout = node_timeout
        self.clock = clock
        self.job_poll = job_poll
        self._running: dict[str, threading.Thread] = {}

    def next_run_at(self, policy: PolicyInfo) -> datetime | None:
        if not policy.schedule:
            return None
        base = policy.last_run_at or policy.created_at
        return next_run(policy.schedule, base, self.zone)

    def tick(self) -> list[str]:
        """Start every due policy's run (in a thread of its own); returns their names."""
        now = self.clock()
        started = []
        for policy in self.policies.list():
            due = self.next_run_at(policy)
            if due is None or due > now:
                continue
            if policy.name in self._running and self._running[policy.name].is_alive():
                continue  # still backing up from its last slot
            self.policies.mark_run(policy.name, now)
            thread = threading.Thread(
                target=self.run_policy, args=(policy,), name=f"policy-{policy.name}", daemon=True
            )
            self._running[policy.name] = thread
            thread.start()
            started.append(policy.name)
            log.info("schedule due policy=%s slot=%s", policy.name, due.isoformat())
        return started

    def wait_idle(self, timeout: float | None = None) -> None:
        """Until every policy run started so far has ended."""
        for thread in list(self._running.values()):
            thread.join(timeout)

    def run_policy(self, policy: PolicyInfo) -> None:
        """One run: a task of its own (kind `schedule`), the parent of its backups,
        failed when any of them did not complete or could not start."""
        run_id = self.tasks.open(TaskKind.SCHEDULE, None, "schedule")
        not_started: list[str] = []
        jobs: dict[str, str] = {}
        try:
            self._wait_for_nodes()
            for vm in self.vms_of(policy):
                try:
                    jobs[vm] = self.backups.submit(
                        vm, "auto", started_by="schedule", parent_id=run_id
                    )
                except SendenseError as exc:
                    not_started.append(vm)
                    log.warning(
                        "scheduled backup not started policy=%s vm=%s: %s",
                        policy.name,
                        vm,
                        exc.message,
                    )
                except Exception:  # a bug for one VM must not cost the others their backup
                    not_started.append(vm)
                    log.exception("scheduled backup not started policy=%s vm=%s", policy.name, vm)
            self._wait(set(jobs.values()))
            self._prune(policy, jobs, run_id)
        finally:
            self._close_run(run_id, policy.name, jobs, not_started)

    def _close_run(
        self, run_id: str, policy: str, jobs: dict[str, str], not_started: list[str]
    ) -> None:
        with self.db.session() as s:
            rows = s.execute(select(Job.id, Job.state).where(Job.id.in_(list(jobs.values()))))
            states = {job_id: state for job_id, state in rows}
        failed = sorted(
            [vm for vm, job in jobs.items() if states.get(job) != JobState.COMPLETE] + not_started
        )
        total = len(jobs) + len(not_started)
        error = f"policy {policy}: {len(failed)} of {total} backups did not complete"
        if failed:
            self.tasks.close(run_id, f"{error} ({', '.join(failed)})", "backups_failed")
        else:
            self.tasks.close(run_id)

    def _prune(self, policy: PolicyInfo, jobs: dict[str, str], run_id: str) -> None:
        for vm, task_id in jobs.items():
            try:
                # The row the backup wrote to: a name may stand for several VMs.
                pruned = self.prune.run(self._vm_of(task_id) or vm, policy.rules)
                if pruned.job_id is not None:
                    self.tasks.attribute(pruned.job_id, "schedule", run_id)
            except SendenseError as exc:
                log.warning(
                    "scheduled prune failed policy=%s vm=%s: %s", policy.name, vm, exc.message
                )
            except Exception:  # ...nor their prune: the thread goes on to the next VM
                log.exception("scheduled prune failed policy=%s vm=%s", policy.name, vm)

    def _vm_of(self, task_id: str) -> str | None:
        with self.db.session() as s:
            return s.scalar(select(Job.vm_id).where(Job.id == task_id))

    def _wait_for_nodes(self) -> None:
        """A hub that just started runs its missed slots before the nodes' tunnels are
        back: give them `node_timeout_s` to reconnect rather than fail every backup."""
        wanted = {v.node for v in self.backups.vcenters.list()}
        deadline = time.monotonic() + self.node_timeout
        while True:
            up = {n.name for n in self.node_status() if n.connected}
            if wanted <= up:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(self.job_poll)
        log.warning(
            "scheduled run goes ahead with nodes not connected: %s", ", ".join(sorted(wanted - up))
        )

    def _wait(self, job_ids: set[str]) -> None:
        while job_ids:
            with self.db.session() as s:
                ended = set(
                    s.scalars(select(Job.id).where(Job.id.in_(job_ids), ~Job.state.in_(ACTIVE)))
                )
            job_ids -= ended
            if job_ids:
                time.sleep(self.job_poll)

    def vms_of(self, policy: PolicyInfo) -> list[str]:
        """The VMs a policy covers: by name, and by pattern or folder among the VMs the
        hub knows and those its vCenters list now."""
        names = {value for kind, value in policy.assignments if kind == "vm"}
        if any(kind != "vm" for kind, _ in policy.assignments):
            for vm, folder in self._known_vms().items():
                chosen = self.policies.policy_for(vm, folder)
                if chosen is not None and chosen.name == policy.name:
                    names.add(vm)
        return sorted(names)

    def _known_vms(self) -> dict[str, str | None]:
        with self.db.session() as s:
            known: dict[str, str | None] = {name: None for name in s.scalars(select(Vm.name))}
        for vcenter in self.backups.vcenters.list():
            try:
                login, node = self.backups.vcenters.login(vcenter.host)
                client = self.nodes.open(node)
                try:
                    for vm in client.discover(login).vms:
                        known[vm.name] = vm.path.rsplit("/", 1)[0]
                finally:
                    client.close()
            except SendenseError as exc:
                log.warning("could not list the VMs of %s: %s", vcenter.host, exc.message)
        return known

    def schedules(self) -> list[ScheduleInfo]:
        out = []
        for policy in self.policies.list():
            at = self.next_run_at(policy)
            if policy.schedule and at is not None:
                vms = sorted(v for k, v in policy.assignments if k == "vm")
                out.append(ScheduleInfo(policy.name, policy.schedule, policy.last_run_at, at, vms))
        return out
