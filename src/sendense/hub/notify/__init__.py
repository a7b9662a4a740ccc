"""Notifications: targets (SMTP, webhooks) with sealed secrets, rules, the
notifier loop with its outbox and cursor in the database, storm digests and the
daily report. May import `sendense.common`, `hub.db`, `hub.auth` (the secret
box), `hub.nodes` (disconnected nodes), `hub.repository` (free space) and
`hub.retention` (policies' schedules for stale VMs)."""
