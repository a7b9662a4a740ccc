"""Who may call the hub: API tokens (stored as digests) and the secret box that
seals what the database must keep but never show (node tokens, vCenter
passwords). May import `sendense.common` and `hub.db`."""
