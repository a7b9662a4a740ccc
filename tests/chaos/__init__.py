"""Fault injection (issue 13): a loop of backups and prunes of a multi-disk VM with a
hub, a node, their tunnel and the repository's qemu-nbd killed at random (seeded)
moments, a repository that fills up or is not mounted at start-up, and PostgreSQL
stopped mid-job; after each fault and a restart, the invariants of
`invariants.py` must hold. `loop.run` drives it; tests/test_chaos.py runs it."""
