"""Backups: the ledger that reserves, prepares, finishes and fails restore
points, the runner that drives a backup through the node, the scheduler that
runs policies, and start-up reconciliation of what a crash left. May import
`sendense.common`, `hub.db`, `hub.repository`, `hub.nodes`, `hub.retention` and
`hub.tasks`."""
