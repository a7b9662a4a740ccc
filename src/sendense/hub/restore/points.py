"""The restore point every way of restoring starts from."""

from __future__ import annotations

from sqlalchemy.orm import Session

from sendense.common.errors import NotFound, PointNotRestorable
from sendense.hub.db.models import PointStatus, RestorePoint


def restorable_point(s: Session, point_id: str) -> RestorePoint:
    """The point, when it exists and is complete (not unfinished, not invalid)."""
    point = s.get(RestorePoint, point_id)
    if point is None:
        raise NotFound(f"restore point {point_id} does not exist")
    if point.status != PointStatus.COMPLETE:
        raise PointNotRestorable(point_id, point.status.value)
    return point
