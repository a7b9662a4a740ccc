"""Who may call the hub and what they did: API tokens (stored as digests, each
with a role, an expiry and a revocation), the table of roles and the permission
each API route needs (`roles.py`), the append-only audit log, and the secret box
that seals what the database must keep but never show (node tokens, vCenter
passwords). May import `sendense.common` and `hub.db`."""
