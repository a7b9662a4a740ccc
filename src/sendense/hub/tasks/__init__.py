"""Tasks: every long operation of the hub (backup, restore, verify...) runs on
the one `TaskRunner` base (a worker pool, live progress evicted after the task
ends, guarded state changes, one error handling), and follows its node's half
with `follow_node_task`; each task's log file (`task_log`, what goes into it:
`task_log_handler`, its end line: `task_ends`); `catalog` lists, shows and
cancels tasks and opens the ones no runner runs (a download); `housekeeping` removes old
tasks and their logs; `metrics` reports tasks, points, repositories, the NBD
pool and nodes to Prometheus. May import `sendense.common`, `sendense.nbd`,
`hub.db` and `hub.repository` (a repository's free space, for metrics)."""
