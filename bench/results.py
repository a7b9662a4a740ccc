"""bench/results.json: each bench script adds its section and its top-level ratios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.json")


def record(section: str, figures: dict[str, Any], ratios: dict[str, float] | None = None) -> None:
    """Read, add, write through a temporary file: a run cut short leaves the old file."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[section] = figures
    results.update({key: round(value, 3) for key, value in (ratios or {}).items()})
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(RESULTS)
