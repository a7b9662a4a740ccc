"""File-level restore: a restore point's disks opened read-only in a libguestfs
appliance (a small VM of its own, so a guest's filesystem, untrusted input, is
parsed by the appliance's kernel and never by the hub's), its partitions, logical
volumes and filesystems found and mounted there, and files and folders read out
as they were at that point: listed, looked up, downloaded, or packed as tar or zip.

A browsing session is a task (kind `browse`) with its point's id, so prune keeps
the point while it is browsed and start-up reconciliation ends what a killed hub
left. It may import `db`, `repository` (the chain's files), `restore` (which
points are restorable) and `tasks` (the task's log), and `common`.
"""
