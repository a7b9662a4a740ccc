"""Retention selection against an independent implementation of the same rules."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from sendense.hub.retention.rules import Candidate, KeepRules, select_points

Key = Callable[[datetime], object]


def reference(points: list[datetime], rules: list[tuple[Key, int]]) -> set[datetime]:
    """Per rule: group what no earlier rule kept or used up by period, skip periods an
    earlier rule already keeps a point in, keep the newest of the newest `n` groups;
    every member of a chosen group is used up."""
    kept: set[datetime] = set()
    used: set[datetime] = set()
    for key, n in rules:
        covered = {key(p) for p in kept}
        groups: dict[object, list[datetime]] = defaultdict(list)
        for p in points:
            if p not in kept and p not in used and key(p) not in covered:
                groups[key(p)].append(p)
        for k in sorted(groups, key=lambda k: max(groups[k]), reverse=True)[:n]:
            kept.add(max(groups[k]))
            used.update(groups[k])
    return kept


def kept_by_select(points: list[datetime], rules: KeepRules, zone: ZoneInfo) -> set[datetime]:
    candidates = [Candidate(f"p{i}", p) for i, p in enumerate(points)]
    return {d.at for d in select_points(candidates, rules, zone) if d.keep}


def keys(zone: ZoneInfo) -> dict[str, Key]:
    return {
        "last": lambda p: p,
        "hourly": lambda p: p.astimezone(zone).replace(minute=0, second=0, microsecond=0),
        "daily": lambda p: p.astimezone(zone).date(),
        "weekly": lambda p: p.astimezone(zone).isocalendar()[:2],
        "monthly": lambda p: (p.astimezone(zone).year, p.astimezone(zone).month),
        "yearly": lambda p: p.astimezone(zone).year,
    }


def test_400_daily_backups_keep_exactly_what_the_rules_select() -> None:
    zone = ZoneInfo("UTC")
    start = datetime(2025, 1, 1, 2, 0, tzinfo=UTC)
    points = [start + timedelta(days=d) for d in range(400)]
    rules = KeepRules(daily=7, weekly=4, monthly=12, yearly=2)
    k = keys(zone)
    want = reference(
        points, [(k["daily"], 7), (k["weekly"], 4), (k["monthly"], 12), (k["yearly"], 2)]
    )
    got = kept_by_select(points, rules, zone)
    assert got == want
    assert 7 + 4 + 12 <= len(got) <= 7 + 4 + 12 + 2
    assert max(points) in got


@pytest.mark.parametrize("seed", range(20))
def test_random_schedules_and_rules_in_a_dst_zone(seed: int) -> None:
    rng = random.Random(seed)
    zone = ZoneInfo("Europe/Riga")
    at = datetime(2024, 1, 1, tzinfo=UTC)
    points = []
    for _ in range(rng.randint(1, 300)):
        at += timedelta(minutes=rng.choice([7, 45, 90, 300, 1440, 4000]))
        points.append(at)
    counts = {name: rng.choice([0, 0, 1, 2, 3, 5]) for name in keys(zone)}
    rules = KeepRules(**counts)
    k = keys(zone)
    order = ["last", "hourly", "daily", "weekly", "monthly", "yearly"]
    want = set(points) if rules.empty else reference(points, [(k[n], counts[n]) for n in order])
    assert kept_by_select(points, rules, zone) == want


def test_protected_and_pinned_points_are_kept_and_not_counted() -> None:
    zone = ZoneInfo("UTC")
    day = timedelta(days=1)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    points = [
        Candidate("a", base),
        Candidate("b", base + day, protected=True),
        Candidate("c", base + 2 * day),
        Candidate("d", base + 3 * day),
    ]
    decisions = {
        d.id: d for d in select_points(points, KeepRules(last=1), zone, pinned={"a": "in use"})
    }
    assert {i: (d.keep, d.reason) for i, d in decisions.items()} == {
        "d": (True, "keep-last"),
        "c": (False, "remove"),
        "b": (True, "protected"),
        "a": (True, "in use"),
    }


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="keep-daily"):
        KeepRules(daily=-1)
