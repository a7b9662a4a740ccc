"""Space per repository: what its restore points take, and what prune would free."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sendense.common.errors import SendenseError
from sendense.hub.db.space import point_sizes
from sendense.hub.retention.policies import PolicyService, matching_policy
from sendense.hub.retention.prune import PruneService


@dataclass(frozen=True)
class RepositoryUsage:
    backup_bytes: int = 0
    prunable_bytes: int = 0


def repository_usage(prune: PruneService, policies: PolicyService) -> dict[str, RepositoryUsage]:
    """By repository id. Prunable is the size of the files of the points each VM's
    policy would remove now (a removed layer's data may partly move into its child)."""
    with prune.db.session() as s:
        points = point_sizes(s)
    used: dict[str, int] = defaultdict(int)
    vms: set[tuple[str, str]] = set()  # (name, id): names are not unique
    for repo, name, vm_id, size in points.values():
        used[repo] += size
        vms.add((name, vm_id))
    known = policies.list()
    freed: dict[str, int] = defaultdict(int)
    for vm, vm_id in sorted(vms):
        policy = matching_policy(known, vm)
        if policy is None:
            continue
        try:
            decisions = prune.plan(vm_id, policy.rules)
        except SendenseError:
            continue
        for d in decisions:
            if not d.keep and d.id in points:
                freed[points[d.id][0]] += points[d.id][3]
    return {repo: RepositoryUsage(used[repo], freed[repo]) for repo in set(used) | set(freed)}
