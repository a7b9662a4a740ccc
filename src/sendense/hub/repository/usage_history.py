"""Each repository's space over time: one sample a day (used, free and total bytes
of its filesystem, and what its restore points' files take), for the dashboard.

Housekeeping samples every mounted repository; a day's first sample is the day's
(a later one the same day leaves it as it is), and two hubs sharing a database
never write two rows for one day: the table's unique (repository, day) refuses
the second. Samples older than `KEEP_DAYS` go.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from sendense.common.errors import InvalidInput
from sendense.hub.db.database import Database
from sendense.hub.db.models import RepositoryUsageSample
from sendense.hub.db.space import backup_bytes
from sendense.hub.repository.repositories import RepositoryInfo

log = logging.getLogger(__name__)
KEEP_DAYS = 2 * 366  # two years, leap day or not


@dataclass(frozen=True)
class UsagePoint:
    day: date
    used: int
    free: int
    total: int
    backup: int | None


class UsageHistory:
    def __init__(self, db: Database) -> None:
        self.db = db

    def sample(self, repos: Sequence[RepositoryInfo], today: date) -> int:
        """Today's sample of each repository that has none yet, from its capacity;
        the number of rows written."""
        if not repos:
            return 0
        with self.db.session() as s:
            have = set(
                s.scalars(
                    select(RepositoryUsageSample.repository_id).where(
                        RepositoryUsageSample.day == today,
                        RepositoryUsageSample.repository_id.in_([r.id for r in repos]),
                    )
                )
            )
            missing = [r for r in repos if r.id not in have]
            backups = backup_bytes(s, [r.id for r in missing]) if missing else {}
        written = 0
        for repo in missing:
            try:
                with self.db.session() as s:
                    s.add(
                        RepositoryUsageSample(
                            repository_id=repo.id,
                            day=today,
                            used_bytes=repo.capacity.used,
                            free_bytes=repo.capacity.free,
                            total_bytes=repo.capacity.total,
                            backup_bytes=backups.get(repo.id, 0),
                        )
                    )
            except IntegrityError:
                # Another hub sampled it meanwhile (or the repository is gone).
                log.debug("usage of repository %s on %s: sampled already", repo.name, today)
                continue
            written += 1
        return written

    def series(
        self, repository_id: str, days: int = 365, today: date | None = None
    ) -> list[UsagePoint]:
        """The samples of the `days` days up to `today` (default: the newest
        sample's day), oldest first."""
        if days < 1:
            raise InvalidInput(f"days must be at least 1, not {days}")
        with self.db.session() as s:
            if today is None:
                today = s.scalar(
                    select(func.max(RepositoryUsageSample.day)).where(
                        RepositoryUsageSample.repository_id == repository_id
                    )
                )
                if today is None:
                    return []
            rows = s.scalars(
                select(RepositoryUsageSample)
                .where(
                    RepositoryUsageSample.repository_id == repository_id,
                    RepositoryUsageSample.day > today - timedelta(days=days),
                    RepositoryUsageSample.day <= today,
                )
                .order_by(RepositoryUsageSample.day)
            ).all()
        return [
            UsagePoint(r.day, r.used_bytes, r.free_bytes, r.total_bytes, r.backup_bytes)
            for r in rows
        ]

    def forget_before(self, day: date) -> int:
        """Samples of days before `day` go; how many."""
        with self.db.session() as s:
            done = s.execute(delete(RepositoryUsageSample).where(RepositoryUsageSample.day < day))
            return int(getattr(done, "rowcount", 0) or 0)
