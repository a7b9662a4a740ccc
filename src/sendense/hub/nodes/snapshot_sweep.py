"""The hub's half of the snapshot hunter: every `snapshot_sweep_s` it hands each
connected node the login of its vCenters (a node keeps no vCenter password, so a
node restarted after a crash mid-backup could not remove that backup's snapshot
until the next backup). The node answers at once when it recorded no dead job's
snapshot there; otherwise it logs in and removes them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from sendense.common.errors import SendenseError
from sendense.hub.nodes.client import NodeConnector
from sendense.hub.nodes.registry import NodeInfo
from sendense.hub.nodes.vcenters import VcenterService

log = logging.getLogger(__name__)
SWEEP_CALL_S = 5.0  # how long one call is retried through a tunnel that blinks


class SnapshotSweep:
    def __init__(
        self,
        vcenters: VcenterService,
        connector: NodeConnector,
        node_status: Callable[[], Iterable[NodeInfo]],
    ) -> None:
        self.vcenters = vcenters
        self.connector = connector
        self.node_status = node_status

    def run(self) -> int:
        """One round; the dead jobs' snapshots still pending on all nodes."""
        connected = {n.name for n in self.node_status() if n.connected}
        pending = 0
        for vcenter in self.vcenters.list():
            if vcenter.node not in connected:
                continue
            try:
                login, node = self.vcenters.login(vcenter.host)
                client = self.connector.open(node, retry_s=SWEEP_CALL_S)
                try:
                    answer = client.hunt_snapshots(login)
                finally:
                    client.close()
            except SendenseError as exc:
                log.warning("snapshot sweep of %s skipped: %s", vcenter.host, exc.message)
                continue
            for warning in answer.warnings:
                log.warning("snapshot sweep of %s: %s", vcenter.host, warning)
            pending += answer.pending
        return pending
