"""Restore-point verification: `qemu-img check` of each layer and the node's
block checksum recomputed from the chain (verifier), run as a task (runner).
May import `sendense.common`, `sendense.nbd`, `hub.db`, `hub.repository` and
`hub.tasks`."""
