"""The hub's routers, one module per top-level path under /api/v1 (`jobs.py`
serves /api/v1/jobs...). Each maps HTTP to one call of a service or runner the
`Hub` holds; no business rule lives here."""
