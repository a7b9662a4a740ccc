"""The hub appliance (SHA): repository, task database, NBD exports, API on 8082.

One package per capability; `service.Hub` is the one place that assembles them
(services, then the task runners), `config` holds the settings. Packages, from
the bottom up, and what each may import besides `sendense.common` (checked by
tests/test_layout.py):

* `db`: tables, sessions, migrations.
* `auth`: API tokens, sealed secrets. (`db`)
* `repository`: repositories and their space, the NBD port pool, NBD exports,
  the hub's private read-only image reader. (`db`, `nbd`)
* `nodes`: enrolled nodes, the client that calls a node, vCenters, the tunnel's
  sshd. (`db`, `auth`, `nbd`)
* `tasks`: the task runner every long operation is built on. (`db`, `nbd`)
* `verify`: restore-point verification. (`db`, `repository`, `tasks`, `nbd`)
* `restore`: instant access, downloads and conversions, whole VMs to vCenter.
  (`db`, `repository`, `nodes`, `tasks`, `nbd`)
* `retention`: keep rules, policies, prune and its merges, space a prune frees.
  (`db`, `repository`, `restore`, `verify`, `tasks`, `nbd`)
* `backup`: the ledger of restore points, the backup runner, schedules,
  start-up reconciliation. (`db`, `repository`, `nodes`, `retention`, `tasks`)
* `api`: the REST API, over a `Hub`. (anything in the hub)

No service imports `api` or `sendense.cli`; the hub never imports `sendense.node`.
New code goes into the package of the capability it serves; code two packages
need goes down into the lower one (or `sendense.common`), never sideways.
"""
