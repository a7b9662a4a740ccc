"""Space per repository: what its restore points take, and what prune would free."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select

from sendense.common.errors import SendenseError
from sendense.hub.db.models import RestorePoint, Vm
from sendense.hub.retention.policies import PolicyService
from sendense.hub.retention.prune import PruneService


@dataclass(frozen=True)
class RepositoryUsage:
    backup_bytes: int = 0
    prunable_bytes: int = 0


def repository_usage(prune: PruneService, policies: PolicyService) -> dict[str, RepositoryUsage]:
    """By repository id. Prunable is the size of the files of the points each VM's
    policy would remove now (a removed layer's data may partly move into its child)."""
    sizes: dict[str, int] = {}
    where: dict[str, str] = {}
    vms: set[tuple[str, str]] = set()  # (name, id): names are not unique
    with prune.db.session() as s:
        rows = s.execute(select(RestorePoint, Vm.name, Vm.id).join(Vm, Vm.id == RestorePoint.vm_id))
        for point, vm_name, vm_id in rows:
            sizes[point.id] = sum(d.file_size or 0 for d in point.disks)
            where[point.id] = point.repository_id
            vms.add((vm_name, vm_id))
    used: dict[str, int] = defaultdict(int)
    for point_id, size in sizes.items():
        used[where[point_id]] += size
    freed: dict[str, int] = defaultdict(int)
    for vm, vm_id in sorted(vms):
        policy = policies.policy_for(vm)
        if policy is None:
            continue
        try:
            decisions = prune.plan(vm_id, policy.rules)
        except SendenseError:
            continue
        for d in decisions:
            if not d.keep and d.id in sizes:
                freed[where[d.id]] += sizes[d.id]
    return {repo: RepositoryUsage(used[repo], freed[repo]) for repo in set(used) | set(freed)}
