"""Prune with real QCOW2 chains: what is kept matches the rules, chains stay within the
maximum length, and every kept restore point still reads as the guest did that day."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from sendense.hub.api.queries import Queries
from sendense.hub.db.models import PointStatus, RestorePoint, RestorePointDisk
from sendense.hub.retention.rules import KeepRules
from sendense.hub.service import Hub
from sendense.hub.verify.verifier import Verifier
from tests.conftest import make_settings
from tests.rig.chains import hub_backup, same_as

SIZE = 1 << 20
PIECE = 64 * 1024
# Every rule reaches its count within the run, across a year's end.
RULES = KeepRules(daily=7, weekly=4, monthly=3, yearly=2)
MAX_CHAIN = 6
# The long run: 31 October to 19 March, the shortest that still has each rule reach
# its count and let older points go (the daily ones every day, a weekly one each
# week, the monthly one of October once February's is kept) across a year's end.
# It was 200 days from 1 September: the same steps, with more weeks of them.
START = datetime(2025, 10, 31, 22, 30, tzinfo=UTC)
LONG_RUN = 140


def reference_keep(days: list[date]) -> set[date]:
    """The rules for one backup a day, worked out by calendar: per rule, the newest
    day of each period no earlier rule keeps a day in, newest periods first; the
    days of a chosen period are used up for later rules."""
    kept: set[date] = set()
    used: set[date] = set()
    periods = [
        (lambda d: d, RULES.daily),
        (lambda d: d.isocalendar()[:2], RULES.weekly),
        (lambda d: (d.year, d.month), RULES.monthly),
        (lambda d: d.year, RULES.yearly),
    ]
    for period, count in periods:
        covered = {period(d) for d in kept}
        groups: dict[object, list[date]] = defaultdict(list)
        for d in days:
            if d not in kept and d not in used and period(d) not in covered:
                groups[period(d)].append(d)
        for key in sorted(groups, key=lambda k: max(groups[k]), reverse=True)[:count]:
            kept.add(max(groups[key]))
            used.update(groups[key])
    return kept


def chain_lengths(hub: Hub) -> list[int]:
    with hub.db.session() as s:
        layers = {d.id: d.parent_id for d in s.scalars(select(RestorePointDisk))}
    lengths = []
    for parent in layers.values():
        n = 1
        while parent is not None:
            parent, n = layers[parent], n + 1
        lengths.append(n)
    return lengths


@pytest.fixture
def days_hub(tmp_path: Path, database_url: str) -> Iterator[tuple[Hub, int]]:
    """The hub, and how many days it is given: LONG_RUN on SQLite, 60 on PostgreSQL
    (the same merges and rules; a shorter run keeps `make test` short). The two
    backends take the same time per day (40 days, one after the other on a busy
    machine: 37 s on SQLite, 41 s on PostgreSQL): the SQLite run is longer only by
    its days."""
    hub = Hub.open(make_settings(tmp_path, database_url))
    try:
        yield hub, LONG_RUN if database_url.startswith("sqlite") else 60
    finally:
        hub.reconcile("test ended")
        hub.close()


def test_months_of_daily_backups_and_prunes(days_hub: tuple[Hub, int], tmp_path: Path) -> None:
    hub, days = days_hub
    repo = tmp_path / "repo"
    repo.mkdir()
    hub.repos.add(str(repo))
    rng = random.Random(400)
    disks = {2000: bytearray(rng.randbytes(SIZE)), 2001: bytearray(SIZE)}
    at_point: dict[str, dict[int, bytes]] = {}
    day_of: dict[str, date] = {}
    expected: list[date] = []
    start = START
    started = time.monotonic()
    for n in range(days):
        when = start + timedelta(days=n)
        changed: dict[int, list[tuple[int, int]]] = {}
        for key, data in disks.items():
            offset = rng.randrange(SIZE // PIECE) * PIECE
            data[offset : offset + PIECE] = rng.randbytes(PIECE)
            changed[key] = [(offset, PIECE)]
        point = hub_backup(
            hub,
            "daily",
            {k: bytes(v) for k, v in disks.items()},
            changed,
            when,
            max_chain=MAX_CHAIN,
        )
        at_point[point] = {k: bytes(v) for k, v in disks.items()}
        day_of[point] = when.date()
        hub.prune.run("daily", RULES)
        expected = sorted(reference_keep([*expected, when.date()]))
        with hub.db.session() as s:
            kept = {p.id for p in s.scalars(select(RestorePoint))}
        assert sorted(day_of[p] for p in kept) == expected, f"day {n}"
        assert max(chain_lengths(hub)) <= MAX_CHAIN
        for gone in set(at_point) - kept:
            del at_point[gone]
        if n % 50 == 49 or n == days - 1:
            for point_id, sources in at_point.items():
                for disk in Queries(hub.db).restore_point(point_id).disks:
                    assert disk.status == PointStatus.COMPLETE
                    image = repo / disk.file_path
                    assert same_as(image, sources[disk.disk_key], tmp_path), (point_id, disk)
    files = {p.relative_to(repo).as_posix() for p in repo.rglob("*.qcow2")}
    with hub.db.session() as s:
        used = {d.file_path for d in s.scalars(select(RestorePointDisk))}
    assert files == used
    # Merged layers carry their removed parents' areas: verification still covers all.
    verdicts = Verifier(hub.db, hub.repos, hub.settings.scratch_dir).verify(sorted(at_point))
    assert all(v.valid for v in verdicts), [v for v in verdicts if not v.valid]
    assert len(expected) <= 7 + 4 + 3 + 2
    if days >= LONG_RUN:  # every rule at its count: older days were let go by each
        assert {d.year for d in expected} == {2025, 2026}
        assert len({(d.year, d.month) for d in expected}) > 3
        assert START.date() not in expected  # October's, once a monthly point: let go
    print(f"{days} days in {time.monotonic() - started:.0f} s")
