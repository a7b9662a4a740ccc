"""Who may do what: the one table of roles and the permission each API route needs.

A token and a user have one role (a user's session carries the user's). A role
is a set of permissions; each route of the API needs exactly one permission,
looked up here by its method and path template. A route missing from `ROUTES`
is refused to everyone (and fails `tests/test_roles.py`), so a new route cannot
be left open by mistake.
`docs/security.md` shows the same table; the test checks that they agree.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Permission(StrEnum):
    READ = "read"  # list and show everything but secrets
    RUN_BACKUPS = "run_backups"  # start backups, drive a backup from outside, list a vCenter
    VERIFY = "verify"  # verify restore points
    RESTORE = "restore"  # restore to a new VM, download disks, instant access
    RESTORE_OVER = "restore_over"  # restore over an existing VM (`force`)
    MANAGE_NODES = "manage_nodes"  # pair and revoke nodes
    MANAGE_VCENTERS = "manage_vcenters"  # register vCenters (settings)
    MANAGE_REPOSITORIES = "manage_repositories"  # add, check and repair repositories
    MANAGE_POLICIES = "manage_policies"  # policies, assignments, prune, protection
    MANAGE_TOKENS = "manage_tokens"  # create, list and revoke tokens
    MANAGE_USERS = "manage_users"  # list, add and remove users, set their passwords
    READ_AUDIT = "read_audit"  # the audit log
    MANAGE_NOTIFICATIONS = "manage_notifications"  # notification targets and rules
    MANAGE_COPIES = "manage_copies"  # offsite copy targets, their keys, importing a bucket


_OPERATOR = frozenset(
    {Permission.READ, Permission.RUN_BACKUPS, Permission.VERIFY, Permission.RESTORE}
)
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: _OPERATOR,
    Role.VIEWER: frozenset({Permission.READ}),
}

API = "/api/v1"
# (method, path template) -> the permission it needs. Public routes (health,
# node enrollment, login) are not here: they take no token at all.
ROUTES: dict[tuple[str, str], Permission] = {
    ("GET", f"{API}/ports"): Permission.READ,
    ("GET", "/metrics"): Permission.READ,  # Prometheus' usual path, outside the API's prefix
    ("GET", f"{API}/exports"): Permission.READ,
    ("GET", f"{API}/repositories"): Permission.READ,
    ("POST", f"{API}/repositories"): Permission.MANAGE_REPOSITORIES,
    ("GET", f"{API}/repositories/{{ref}}/capacity"): Permission.READ,
    ("GET", f"{API}/repositories/{{ref}}/usage-history"): Permission.READ,
    ("POST", f"{API}/repositories/{{ref}}/check"): Permission.MANAGE_REPOSITORIES,
    ("GET", f"{API}/vms"): Permission.READ,
    ("GET", f"{API}/vms/{{ref}}"): Permission.READ,
    ("GET", f"{API}/restore-points"): Permission.READ,
    ("GET", f"{API}/restore-points/{{point_id}}"): Permission.READ,
    ("POST", f"{API}/restore-points/{{point_id}}/protect"): Permission.MANAGE_POLICIES,
    ("GET", f"{API}/restore-points/{{point_id}}/disks/{{disk_key}}/download"): Permission.RESTORE,
    ("POST", f"{API}/restore-points/{{point_id}}/access"): Permission.RESTORE,
    # File-level restore: a guest's files are as sensitive as its disks.
    ("POST", f"{API}/restore-points/{{point_id}}/browse"): Permission.RESTORE,
    ("GET", f"{API}/restore-points/{{point_id}}/browse"): Permission.RESTORE,
    ("DELETE", f"{API}/restore-points/{{point_id}}/browse"): Permission.RESTORE,
    ("GET", f"{API}/restore-points/{{point_id}}/browse/filesystems"): Permission.RESTORE,
    ("GET", f"{API}/restore-points/{{point_id}}/browse/ls"): Permission.RESTORE,
    ("GET", f"{API}/restore-points/{{point_id}}/browse/stat"): Permission.RESTORE,
    ("GET", f"{API}/restore-points/{{point_id}}/browse/find"): Permission.RESTORE,
    ("GET", f"{API}/restore-points/{{point_id}}/browse/download"): Permission.RESTORE,
    # `force` (replace an existing VM) needs RESTORE_OVER as well: see FORCE below.
    ("POST", f"{API}/restore-points/{{point_id}}/restore-vm"): Permission.RESTORE,
    ("GET", f"{API}/jobs"): Permission.READ,
    ("GET", f"{API}/jobs/{{job_id}}"): Permission.READ,
    ("POST", f"{API}/jobs"): Permission.RUN_BACKUPS,
    ("POST", f"{API}/jobs/{{job_id}}/finish"): Permission.RUN_BACKUPS,
    ("GET", f"{API}/jobs/{{job_id}}/progress"): Permission.READ,
    ("GET", f"{API}/jobs/{{job_id}}/restore-progress"): Permission.READ,
    ("GET", f"{API}/jobs/{{job_id}}/verify-progress"): Permission.READ,
    ("POST", f"{API}/backups"): Permission.RUN_BACKUPS,
    ("GET", f"{API}/tasks"): Permission.READ,
    ("GET", f"{API}/tasks/{{task_id}}"): Permission.READ,
    ("GET", f"{API}/tasks/{{task_id}}/log"): Permission.READ,
    ("GET", f"{API}/tasks/{{task_id}}/events"): Permission.READ,
    # a restore's cancel needs RESTORE as well (routes/tasks.py)
    ("POST", f"{API}/tasks/{{task_id}}/cancel"): Permission.RUN_BACKUPS,
    ("POST", f"{API}/vcenters"): Permission.MANAGE_VCENTERS,
    ("POST", f"{API}/vcenters/{{host}}/login"): Permission.MANAGE_VCENTERS,
    ("GET", f"{API}/vcenters"): Permission.READ,
    ("GET", f"{API}/vcenters/vms"): Permission.READ,
    ("GET", f"{API}/nodes"): Permission.READ,
    ("POST", f"{API}/nodes/pairing-codes"): Permission.MANAGE_NODES,
    ("POST", f"{API}/nodes/{{name}}/revoke"): Permission.MANAGE_NODES,
    ("POST", f"{API}/nodes/{{name}}/vms"): Permission.RUN_BACKUPS,
    ("POST", f"{API}/verify"): Permission.VERIFY,
    ("POST", f"{API}/policies"): Permission.MANAGE_POLICIES,
    ("GET", f"{API}/policies"): Permission.READ,
    ("PUT", f"{API}/policies/{{name}}"): Permission.MANAGE_POLICIES,
    ("DELETE", f"{API}/policies/{{name}}"): Permission.MANAGE_POLICIES,
    ("POST", f"{API}/policies/{{name}}/assignments"): Permission.MANAGE_POLICIES,
    ("POST", f"{API}/prune"): Permission.MANAGE_POLICIES,
    ("GET", f"{API}/schedules"): Permission.READ,
    ("GET", f"{API}/access"): Permission.READ,
    ("GET", f"{API}/access/{{access_id}}"): Permission.READ,
    ("DELETE", f"{API}/access/{{access_id}}"): Permission.RESTORE,
    ("GET", f"{API}/tokens"): Permission.MANAGE_TOKENS,
    ("POST", f"{API}/tokens"): Permission.MANAGE_TOKENS,
    ("GET", f"{API}/tokens/current"): Permission.READ,
    ("DELETE", f"{API}/tokens/{{token_id}}"): Permission.MANAGE_TOKENS,
    ("GET", f"{API}/audit"): Permission.READ_AUDIT,
    ("GET", f"{API}/users"): Permission.MANAGE_USERS,
    ("POST", f"{API}/users"): Permission.MANAGE_USERS,
    ("POST", f"{API}/users/{{name}}/password"): Permission.MANAGE_USERS,
    ("DELETE", f"{API}/users/{{name}}"): Permission.MANAGE_USERS,
    ("GET", f"{API}/notifications/targets"): Permission.MANAGE_NOTIFICATIONS,
    ("POST", f"{API}/notifications/targets"): Permission.MANAGE_NOTIFICATIONS,
    ("DELETE", f"{API}/notifications/targets/{{name}}"): Permission.MANAGE_NOTIFICATIONS,
    ("POST", f"{API}/notifications/targets/{{name}}/test"): Permission.MANAGE_NOTIFICATIONS,
    ("GET", f"{API}/notifications/rules"): Permission.MANAGE_NOTIFICATIONS,
    ("POST", f"{API}/notifications/rules"): Permission.MANAGE_NOTIFICATIONS,
    ("DELETE", f"{API}/notifications/rules/{{name}}"): Permission.MANAGE_NOTIFICATIONS,
    ("GET", f"{API}/copy-targets"): Permission.READ,
    ("POST", f"{API}/copy-targets"): Permission.MANAGE_COPIES,
    ("DELETE", f"{API}/copy-targets/{{name}}"): Permission.MANAGE_COPIES,
    ("POST", f"{API}/copy-targets/{{name}}/key"): Permission.MANAGE_COPIES,
    ("POST", f"{API}/copy-targets/{{name}}/import"): Permission.MANAGE_COPIES,
    ("POST", f"{API}/copy-targets/{{name}}/policy"): Permission.MANAGE_COPIES,
    ("POST", f"{API}/copy-targets/{{name}}/prune"): Permission.MANAGE_COPIES,
    ("POST", f"{API}/copy-targets/{{name}}/copies"): Permission.RUN_BACKUPS,
    ("GET", f"{API}/copy-targets/{{name}}/points"): Permission.READ,
    ("POST", f"{API}/copy-targets/{{name}}/points/{{point_id}}/fetch"): Permission.RESTORE,
    ("POST", f"{API}/copy-targets/{{name}}/verify"): Permission.VERIFY,
    # Ending one's own session: every role may.
    ("POST", f"{API}/auth/logout"): Permission.READ,
    # ...and changing one's own password or second factor.
    ("POST", f"{API}/auth/me"): Permission.READ,
}
# What a whole-VM restore with `force: true` needs on top of its route's permission.
FORCE = Permission.RESTORE_OVER


def allows(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]


def route_permission(method: str, path: str) -> Permission | None:
    """The permission a route needs; None for a route nobody declared."""
    return ROUTES.get((method.upper(), path))
