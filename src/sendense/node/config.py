"""The node's settings (TOML section `[node]`, environment prefix `SENDENSE_NODE_`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from sendense.common.config import SendenseSettings, default_data_dir


class NodeSettings(SendenseSettings):
    toml_section: ClassVar[str] = "node"
    model_config = SettingsConfigDict(env_prefix="SENDENSE_NODE_", extra="forbid")

    data_dir: Path = Field(default_factory=lambda: default_data_dir("node"))
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8081, ge=1, le=65535)
    log_level: str = "INFO"
    # TLS to vCenter: a pinned SHA-256 per host ("vc.example.com" or "host:port"),
    # or `vcenter_insecure` (the simulator); a request may also carry a thumbprint.
    vcenter_thumbprints: dict[str, str] = Field(default_factory=dict)
    vcenter_insecure: bool = False
    enable_cbt: bool = True
    chunk_mib: int = Field(default=4, ge=1, le=32)
    readers_per_disk: int = Field(default=4, ge=1, le=16)
    writes_in_flight: int = Field(default=8, ge=1, le=16)
    # NBD connections per disk, sharing writes_in_flight; through the tunnel each
    # is an ssh connection of its own (node/forwards.py). The hub's qemu-nbd takes
    # `nbd_shared` (10) clients an export.
    nbd_connections_per_disk: int = Field(default=4, ge=1, le=8)
    # ...all but the first opened only when a round trip to the hub takes at
    # least this long (0: always): a near hub gains nothing from them.
    nbd_spread_from_rtt_ms: float = Field(default=3.0, ge=0, le=1000)
    max_jobs: int = Field(default=4, ge=1)
    # Every disk stream of the node together holds at most this much data; a new
    # stream waits for room (limits.py). A stream needs (2 * readers_per_disk +
    # writes_in_flight) * chunk_mib, and 256 KiB per NBD connection: 65 MiB with
    # the defaults.
    memory_budget_mib: int = Field(default=1024, ge=16)
    # NBD data the node sends to the hub, all streams together, in MB/s (10^6
    # bytes); none: as fast as it goes. For a site on a thin shared link.
    bandwidth_mb_s: float | None = Field(default=None, gt=0)
    # While a restore copies disks on the node, the node's backups together read
    # at most this many chunks at once (limits.py RestoreFirst): the restore goes
    # first, the backups slow down but never stop. No restore: no limit.
    backup_reads_during_restore: int = Field(default=2, ge=1, le=64)
    # ...and together read at most this many MB/s (10^6 bytes) meanwhile: the
    # restore shares the node's CPU, the hub's disk and the link with them. 0:
    # only the reads' count. 20 measured: a restore beside ten backups took 1.9
    # times its idle time at 20, 2.2 at 50, 2.6 with no rate (docs/decisions.md).
    backup_mb_s_during_restore: float = Field(default=20.0, ge=0)
    # Removing a snapshot consolidates what the VM wrote since it was taken: hours
    # on a busy VM, so it has its own deadline (a removal that fails after a good
    # copy is a warning, and the snapshot hunter retries it).
    snapshot_remove_timeout_s: float = Field(default=6 * 3600, gt=0)
    # A node on the hub's own machine, running as the hub's user, may reach the
    # hub's export sockets under this directory (the hub's `<data_dir>/nbd`)
    # directly, without the tunnel (no encryption: the benchmarks' baseline), for
    # targets that do not name its end of the tunnel (node/forwards.py).
    hub_export_dir: Path | None = None
    # How often the hunter removes the recorded snapshots of dead jobs.
    snapshot_hunt_interval_s: float = Field(default=300, gt=0)
