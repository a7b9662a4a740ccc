"""A node (its FastAPI app in-process) backing up simulated VMs into a hub's exports."""

from __future__ import annotations

import http.client
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from sendense.common.config import load_settings
from sendense.hub.backup.disks import DiskResult, DiskSpec, PreparedJob
from sendense.hub.service import Hub
from sendense.node.api.app import create_node_app
from sendense.node.auth import NodeTokens
from sendense.node.config import NodeSettings
from tests.rig.vcsim import Vcsim
from tests.rig.vmware_vms import virtual_disks


def node_settings_for(hub: Hub, data_dir: Path, **more: Any) -> NodeSettings:
    """A node on the hub's machine that reaches the hub's exports straight on their
    sockets (no tunnel in in-process tests)."""
    exports = hub.exports.settings.socket_root
    return load_settings(NodeSettings, data_dir=data_dir, hub_export_dir=exports, **more)


@contextmanager
def node_client(settings: NodeSettings) -> Iterator[TestClient]:
    """The node's API in-process, with a token of its own."""
    token = NodeTokens(settings.data_dir).create("hub")
    app = create_node_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


@dataclass
class Watch:
    """Snapshot names seen on the VM while a job ran."""

    seen: set[str] = field(default_factory=set)
    most_at_once: int = 0


def snapshot_names(vm: Any) -> list[str]:
    """The names of the VM's snapshots, read from the simulator. A read the
    simulator drops (it closes a connection whose request it could not serve while
    another client changes the VM) is asked again, twice at most."""
    for attempt in range(3):
        try:
            return _snapshot_names(vm)
        except (http.client.RemoteDisconnected, ConnectionResetError):
            if attempt == 2:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def _snapshot_names(vm: Any) -> list[str]:
    vm_snapshot = vm.snapshot
    if vm_snapshot is None:
        return []
    names: list[str] = []
    stack = list(vm_snapshot.rootSnapshotList)
    while stack:
        tree = stack.pop()
        names.append(tree.name)
        stack.extend(tree.childSnapshotList)
    return names


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def disk_specs(vm: Any) -> list[DiskSpec]:
    return [
        DiskSpec(key, int(d.capacityInBytes)) for key, d in sorted(virtual_disks(vm.config).items())
    ]


def vcenter_login(vc: Vcsim, **change: str) -> dict[str, str]:
    """The simulator's login as the node's API takes it."""
    return {
        "vcenter_host": vc.host,
        "vcenter_user": vc.username,
        "vcenter_password": vc.password,
        "vcenter_thumbprint": vc.thumbprint,
        **change,
    }


def start_body(
    vc: Vcsim, prepared: PreparedJob, vm_name: str, previous: dict[int, str]
) -> dict[str, Any]:
    incremental = any(d.backup_type == "incremental" for d in prepared.disks)
    return {
        "job_id": prepared.job_id,
        "vm_name": vm_name,
        **vcenter_login(vc),
        "nbd_targets": prepared.nbd_targets,
        "backup_type": "incremental" if incremental else "full",
        "previous_change_ids": {str(k): v for k, v in previous.items()},
    }


def wait_job(
    node: TestClient,
    job_id: str,
    vm: Any,
    timeout: float = 120.0,
    during: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], Watch]:
    watch = Watch()
    deadline = time.monotonic() + timeout
    while True:
        names = snapshot_names(vm)
        watch.seen.update(names)
        watch.most_at_once = max(watch.most_at_once, len(names))
        status: dict[str, Any] = node.get(f"/api/v1/jobs/{job_id}").json()
        if status["state"] not in ("queued", "running"):
            return status, watch
        if during is not None:
            during(status)
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {status['state']} after {timeout}s")
        time.sleep(0.05)


def finish_on_hub(hub: Hub, prepared: PreparedJob, status: dict[str, Any]) -> str:
    if status["state"] != "complete":
        hub.ledger.fail(prepared.job_id, status.get("error") or status["state"])
        raise AssertionError(f"node job ended {status['state']}: {status.get('error')}")
    results = {
        d["disk_key"]: DiskResult(
            d["change_id"],
            d["bytes_written"],
            d["checksum"],
            areas=None if d["areas"] is None else [(a, b) for a, b in d["areas"]],
            checksum_block=d["checksum_block"],
        )
        for d in status["disks"]
    }
    return hub.ledger.finish(prepared.job_id, results)
