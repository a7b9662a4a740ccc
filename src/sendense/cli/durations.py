"""Lifetimes typed on the command line: 90m, 12h, 30d, 8w."""

from __future__ import annotations

import re
from datetime import timedelta

from sendense.common.errors import InvalidInput

_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_FORM = re.compile(r"^(\d{1,6})([mhdw])$")


def parse_duration(text: str, option: str = "--expires-in") -> timedelta:
    found = _FORM.match(text.strip().lower())
    if found is None or int(found.group(1)) == 0:
        raise InvalidInput(f"{option} {text!r}: use a number and a unit m, h, d or w (e.g. 30d)")
    return timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])
