"""Logging set-up with secret redaction.

Secrets are registered as they enter the process (a vCenter password, an API
token); every record's message is scrubbed of them, and of `password=` and
`Bearer` patterns, whichever handler formats it.
"""

from __future__ import annotations

import logging
import re
import threading

_PATTERNS = (
    re.compile(r"(?i)(password|passwd|secret|token)(\"?\s*[:=]\s*\"?)([^\s\",}]+)"),
    re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]+)"),
)
_secrets: set[str] = set()
_lock = threading.Lock()
REDACTED = "***"


def register_secret(value: str) -> None:
    """Make `value` disappear from every later log record."""
    if len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _PATTERNS[1].sub(lambda m: f"{m.group(1)}{REDACTED}", text)


class RedactingRecord(logging.LogRecord):
    """A record whose message is scrubbed, whatever handler formats it."""

    def getMessage(self) -> str:
        return redact(super().getMessage())


def install_redaction() -> None:
    """Scrub every record created from now on, in every handler (ours, uvicorn's, pytest's)."""
    logging.setLogRecordFactory(RedactingRecord)


def about_a_task(record: logging.LogRecord) -> bool:
    """What a task's log keeps: Sendense's own records, and warnings and errors
    of the libraries it uses (not httpx's line for every status poll)."""
    return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] == "sendense"


def record_message(record: logging.LogRecord) -> str:
    """A record as a task's log line: its message, its exception in short (no
    traceback), scrubbed."""
    message = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        message = f"{message} ({type(exc).__name__}: {exc})"
    return redact(message)


def setup_logging(level: str = "INFO") -> None:
    install_redaction()
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())
