"""How long backups are kept: Proxmox-style keep rules, policies and their
assignment to VMs, prune with crash-safe merges of chain layers, and the space a
prune would free. May import `sendense.common`, `sendense.nbd`, `hub.db`,
`hub.repository`, `hub.restore` (points an access reads are pinned),
`hub.verify` (layers must verify before a merge) and `hub.tasks` (the VM lock)."""
