"""Fault injection (issue 13): rounds of backups and prunes of a two-disk VM with a
process killed, the repository full or unmounted, or PostgreSQL stopped, at seeded
random moments; after each, every invariant of tests/chaos/invariants.py holds.

    SENDENSE_CHAOS_ROUNDS=200 SENDENSE_CHAOS_SEED=1234 make chaos

The seed is printed, and named in a failure: the same seed replays the same faults
at the same states."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.loop import FAULTS, Row, chaos_world, fault_order, run, summary, table
from tests.rig.vcsim import Vcsim

# `make test`: 6 rounds, 6 different faults (tests/chaos/loop.py, fault_order); the
# seed printed says which, and every run meets others. `make chaos` runs more.
ROUNDS = int(os.environ.get("SENDENSE_CHAOS_ROUNDS") or 6)
SEED = int(os.environ.get("SENDENSE_CHAOS_SEED") or random.SystemRandom().randrange(1 << 31))
# postgresql (every fault) or sqlite (all but the database stopped)
DATABASE = os.environ.get("SENDENSE_CHAOS_DATABASE") or "postgresql"
# only the faults whose name holds one of these words (comma-separated), e.g. "merge,sshd"
ONLY = [w.strip() for w in os.environ.get("SENDENSE_CHAOS_FAULTS", "").split(",") if w.strip()]


@pytest.mark.timeout(300 + 90 * ROUNDS)
def test_chaos_rounds_survive_every_fault(tmp_path: Path, vcsim: Vcsim, si: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount the repository's tmpfs")
    print(f"\nchaos: seed {SEED}, {ROUNDS} rounds on {DATABASE}", flush=True)
    postgresql = DATABASE == "postgresql"
    faults = [f for f in FAULTS if postgresql or not f.postgres_only]
    faults = [f for f in faults if not ONLY or any(w in f.name for w in ONLY)]
    assert faults, f"no fault matches {ONLY}"
    rows: list[Row] = []
    only = f" SENDENSE_CHAOS_FAULTS={','.join(ONLY)}" if ONLY else ""
    replay = (
        f"replay: make chaos SENDENSE_CHAOS_SEED={SEED} SENDENSE_CHAOS_ROUNDS={ROUNDS} "
        f"SENDENSE_CHAOS_DATABASE={DATABASE}{only}"
    )
    try:
        with chaos_world(tmp_path, vcsim, si, SEED, postgresql) as world:
            run(world, ROUNDS, faults, rows)
    except Exception as exc:  # whatever broke, the seed that replays it is named
        report = f"{table(rows)}\n{summary(rows)}"
        (tmp_path / "chaos-table.txt").write_text(report + "\n")
        print(report)
        raise AssertionError(f"chaos seed {SEED}: {exc}\n{report}\n{replay}") from exc
    report = f"{table(rows)}\n{summary(rows)}"
    (tmp_path / "chaos-table.txt").write_text(report + "\n")
    print(f"chaos: seed {SEED}, {ROUNDS} rounds survived\n{report}")


def test_a_run_meets_every_fault_once_before_any_twice() -> None:
    order = fault_order(random.Random(SEED), FAULTS, 3 * len(FAULTS) + 2)
    for start in range(0, len(order), len(FAULTS)):
        deck = order[start : start + len(FAULTS)]
        assert len(set(deck)) == len(deck), deck
    assert {f: order.count(f) for f in FAULTS} == {f: 3 + (f in order[-2:]) for f in FAULTS}, order
