"""Which restore points a retention policy keeps, in the way Proxmox Backup Server
operators know: keep-last, -hourly, -daily, -weekly, -monthly, -yearly.

Points are taken newest first. Each rule in that order keeps the newest point of
each of its periods (in the hub's time zone) until it has kept `count` periods;
a period that a point kept by an earlier rule already falls in is skipped, and a
point that is not the newest of its period under a rule is marked for removal
then (so a later rule does not count it again). Protected points are kept and
counted by no rule. With no rule at all, everything is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, tzinfo

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class KeepRules:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"keep-{f.name} must not be negative")

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class Candidate:
    id: str
    at: datetime
    protected: bool = False


@dataclass(frozen=True)
class Decision:
    id: str
    at: datetime
    keep: bool
    reason: str


def _periods(zone: tzinfo) -> dict[str, Callable[[Candidate], object]]:
    def local(c: Candidate) -> datetime:
        return c.at.astimezone(zone)

    return {
        "last": lambda c: c.id,
        "hourly": lambda c: local(c).strftime("%Y-%m-%d %H"),
        "daily": lambda c: local(c).strftime("%Y-%m-%d"),
        "weekly": lambda c: local(c).isocalendar()[:2],
        "monthly": lambda c: local(c).strftime("%Y-%m"),
        "yearly": lambda c: local(c).year,
    }


def select_points(
    points: list[Candidate], rules: KeepRules, zone: tzinfo, pinned: dict[str, str] | None = None
) -> list[Decision]:
    """A decision for every point, newest first. `pinned` points (the newest, those in
    use) are kept whatever the rules say, with the given reason."""
    ordered = sorted(points, key=lambda c: (c.at, c.id), reverse=True)
    marks: dict[str, str] = {c.id: "protected" for c in ordered if c.protected}
    if rules.empty:
        marks.update({c.id: "no retention rules" for c in ordered if c.id not in marks})
    periods = _periods(zone)
    for rule in RULES:
        count = getattr(rules, rule)
        if not count:
            continue
        period = periods[rule]
        covered = {period(c) for c in ordered if marks.get(c.id, "").startswith("keep-")}
        chosen: set[object] = set()
        for c in ordered:
            if c.id in marks:
                continue
            key = period(c)
            if key in covered:
                continue
            if key in chosen:
                marks[c.id] = "remove"
                continue
            if len(chosen) >= count:
                break
            chosen.add(key)
            marks[c.id] = f"keep-{rule}"
    decisions = []
    for c in ordered:
        reason = marks.get(c.id, "remove")
        if reason == "remove" and pinned and c.id in pinned:
            reason = pinned[c.id]
        decisions.append(Decision(c.id, c.at, reason != "remove", reason))
    return decisions
