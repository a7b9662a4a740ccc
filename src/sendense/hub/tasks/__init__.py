"""Tasks: every long operation of the hub (backup, restore, verify...) runs on
the one `TaskRunner` base (a worker pool, live progress evicted after the task
ends, guarded state changes, one error handling), and follows its node's half
with `follow_node_task`. May import `sendense.common`, `sendense.nbd` and `hub.db`."""
