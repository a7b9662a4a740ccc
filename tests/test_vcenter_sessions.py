"""The node's vCenter round trips, against the simulator. Sessions kept between
jobs (node/vmware/sessions.py): what vCenter sees is one login for a night of
the same login's jobs, none left after the node stops, and a session that ended
or failed replaced, not reused. A backup's facts in one round trip."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sendense.hub.service import Hub
from sendense.node.api.app import Node
from sendense.node.vmware import sessions
from sendense.node.vmware.connection import connect
from sendense.node.vmware.inventory import backup_facts, describe, find_vm
from tests.rig.node_tasks import (
    disk_specs,
    finish_on_hub,
    node_client,
    node_settings_for,
    start_body,
    unique,
    vcenter_login,
    wait_job,
)
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import SCSI0, SCSI1, MiB, create_vm, destroy_vm


@pytest.fixture
def node(tmp_path: Path, hub: Hub, repo_dir: Path) -> Iterator[TestClient]:
    """A node with the hub's repository added."""
    hub.repos.add(str(repo_dir))
    with node_client(node_settings_for(hub, tmp_path / "node")) as client:
        yield client


def node_of(client: TestClient) -> Node:
    node: Node = client.app.state.node  # type: ignore[attr-defined]
    return node


def sessions_of(si: Any, user: str) -> set[str]:
    """The keys of `user`'s sessions vCenter holds now."""
    listed = si.content.sessionManager.sessionList or []
    return {s.key for s in listed if s.userName == user}


def backup(node: TestClient, hub: Hub, vcsim: Vcsim, vm: Any, name: str) -> None:
    """As the hub does it: the VM's inventory, then its backup."""
    looked = node.post("/api/v1/vms/inventory", json=vcenter_login(vcsim, vm_name=name))
    assert looked.status_code == 200, looked.text
    prepared = hub.ledger.prepare(name, disk_specs(vm), "full")
    started = node.post("/api/v1/backup/start", json=start_body(vcsim, prepared, name, {}))
    assert started.status_code == 202, started.text
    status, _ = wait_job(node, prepared.job_id, vm)
    finish_on_hub(hub, prepared, status)


def test_a_nights_jobs_of_one_login_share_one_vcenter_session(
    tmp_path: Path, hub: Hub, repo_dir: Path, vcsim: Vcsim, si: Any
) -> None:
    hub.repos.add(str(repo_dir))
    name = unique("kept")
    vm = create_vm(si, name, [(2000, 8 * MiB, SCSI0)], cbt=True)
    before = sessions_of(si, vcsim.username)
    try:
        with node_client(node_settings_for(hub, tmp_path / "node")) as node:
            for _ in range(3):
                backup(node, hub, vcsim, vm, name)
            kept = node_of(node).runner.sessions
            assert kept.logins == 1  # three inventories and three backups, one login
            assert len(sessions_of(si, vcsim.username) - before) == 1
        # The node stopped: it logged out.
        assert sessions_of(si, vcsim.username) - before == set()
    finally:
        destroy_vm(si, vm)


def test_a_session_that_ended_or_failed_is_not_used_again(
    node: TestClient, hub: Hub, vcsim: Vcsim, si: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("ended")
    vm = create_vm(si, name, [(2000, 8 * MiB, SCSI0)], cbt=True)
    kept = node_of(node).runner.sessions
    try:
        backup(node, hub, vcsim, vm, name)
        assert kept.logins == 1
        # vCenter ends the kept session (its idle timeout, an administrator).
        (ours,) = [s for s in kept._sessions.values()]
        si.content.sessionManager.TerminateSession(
            [ours.vc.si.content.sessionManager.currentSession.key]
        )
        monkeypatch.setattr(sessions, "CHECK_AFTER_S", 0.0)  # checked before reuse
        time.sleep(0.01)
        backup(node, hub, vcsim, vm, name)
        assert kept.logins == 2
        # A job that fails drops its session: the next one logs in again.
        refused = node.post(
            "/api/v1/vms/inventory", json=vcenter_login(vcsim, vm_name="no-such-vm")
        )
        assert refused.status_code == 404, refused.text
        backup(node, hub, vcsim, vm, name)
        assert kept.logins == 3
    finally:
        destroy_vm(si, vm)


def test_a_backups_facts_in_one_round_trip_match_the_full_description(
    vcsim: Vcsim, si: Any
) -> None:
    """backup_facts (one property-collector call) says what describe says of the
    VM's identity, CBT, tools and disks."""
    name = unique("facts")
    vm = create_vm(si, name, [(2000, 8 * MiB, SCSI0), (2016, 4 * MiB, SCSI1)], cbt=True)
    vc = connect(vcsim.host, vcsim.username, vcsim.password, vcsim.thumbprint)
    try:
        facts = backup_facts(vc, find_vm(vc, name), name)
        full = describe(find_vm(vc, name))
        assert facts.uuid == full.uuid == vm.config.instanceUuid
        assert (facts.cbt_enabled, facts.tools_running) == (full.cbt_enabled, full.tools_running)
        assert facts.cbt_enabled
        assert [d.key for d in facts.disks] == [2000, 2016]
        assert facts.disks == [d.model_copy(update={"allocated_bytes": None}) for d in full.disks]
    finally:
        vc.close()
        destroy_vm(si, vm)


class _FakeVcenter:
    """A fake session (the bookkeeping alone; the simulator tests above log in)."""

    def __init__(self) -> None:
        self.host = "vc"
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_failure_retires_a_shared_session_for_new_jobs_once_its_users_are_done() -> None:
    made: list[_FakeVcenter] = []

    def opener(*_login: object) -> Any:
        made.append(_FakeVcenter())
        return made[-1]

    async def night() -> None:
        kept = sessions.VcenterSessions(idle_s=60, opener=opener)
        login = ("vc", "u", "pw", None, True)

        async def failing_job(running: Any) -> None:
            async with kept.use(*login) as failing:
                assert failing is running  # shared while both run
                raise RuntimeError("the job failed")

        async with kept.use(*login) as running:
            with pytest.raises(RuntimeError):
                await failing_job(running)
            async with kept.use(*login) as later:
                assert later is not running  # a new job gets a new session
            assert not made[0].closed  # still in use
        assert made[0].closed
        assert not made[1].closed
        assert kept.logins == 2
        await kept.close()
        assert made[1].closed

    asyncio.run(night())
