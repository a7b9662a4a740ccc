"""What restore points take on disk, summed in the database: per point (with its
repository and VM) and per repository. One query each, whatever the number of
points."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sendense.hub.db.models import RestorePoint, RestorePointDisk, Vm


def point_sizes(s: Session) -> dict[str, tuple[str, str, str, int]]:
    """Each restore point's (repository id, VM name, VM id, size of its files)."""
    rows = s.execute(
        select(
            RestorePoint.id,
            RestorePoint.repository_id,
            Vm.name,
            Vm.id,
            func.coalesce(func.sum(RestorePointDisk.file_size), 0),
        )
        .join(Vm, Vm.id == RestorePoint.vm_id)
        .outerjoin(RestorePointDisk, RestorePointDisk.restore_point_id == RestorePoint.id)
        .group_by(RestorePoint.id, RestorePoint.repository_id, Vm.name, Vm.id)
    )
    return {point: (repo, name, vm_id, int(size or 0)) for point, repo, name, vm_id, size in rows}


def backup_bytes(s: Session, repository_ids: Sequence[str] | None = None) -> dict[str, int]:
    """What each repository's restore points' files take, by repository id."""
    query = (
        select(RestorePoint.repository_id, func.coalesce(func.sum(RestorePointDisk.file_size), 0))
        .join(RestorePointDisk, RestorePointDisk.restore_point_id == RestorePoint.id)
        .group_by(RestorePoint.repository_id)
    )
    if repository_ids is not None:
        query = query.where(RestorePoint.repository_id.in_(repository_ids))
    return {repo_id: int(total or 0) for repo_id, total in s.execute(query)}
