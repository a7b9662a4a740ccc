"""Users' passwords as argon2id hashes (argon2-cffi's RFC 9106 low-memory
profile: 64 MiB, 3 passes, 4 lanes) and their TOTP second factor (RFC 6238, 30 s
steps, one step of clock drift either way, each step accepted once)."""

from __future__ import annotations

import hmac
import threading
import time

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from sendense.common.errors import InvalidInput

MIN_LENGTH = 10
MAX_LENGTH = 1024  # hashing a megabyte costs what hashing ten bytes does, but why take it
ISSUER = "Sendense"
_hasher = PasswordHasher()
# Each hash takes 64 MiB and a few hundred ms of CPU: at most two at once, so a
# burst of logins queues instead of taking the hub's memory.
_hashing = threading.BoundedSemaphore(2)
# Checked when the name is unknown, so an unknown user costs the same time.
_DUMMY = _hasher.hash("sendense: no such user")


def check_policy(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise InvalidInput(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise InvalidInput(f"a password has at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    check_policy(password)
    return rehash(password)


def rehash(password: str) -> str:
    """A new hash of a password already in use (no policy check: it was set under
    the policy of its day)."""
    with _hashing:
        return _hasher.hash(password)


def password_matches(stored: str | None, password: str) -> bool:
    """Whether `password` is the one `stored` was made from; `stored` None (no
    such user) takes as long and is False."""
    with _hashing:
        try:
            return _hasher.verify(stored or _DUMMY, password[:MAX_LENGTH]) and stored is not None
        except (VerificationError, InvalidHashError):
            return False


def needs_rehash(stored: str) -> bool:
    """Hashed with other parameters than today's: rehash at the next login."""
    return _hasher.check_needs_rehash(stored)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, user: str) -> str:
    """The otpauth:// URI an authenticator app reads (as a QR code or pasted)."""
    return pyotp.TOTP(secret).provisioning_uri(name=user, issuer_name=ISSUER)


def totp_step(
    secret: str, code: str, last_step: int | None, now: float | None = None
) -> int | None:
    """The time step `code` belongs to (now, or one step either side), or None when
    it matches none or a step at or before `last_step` (a code is used once)."""
    totp = pyotp.TOTP(secret)
    moment = time.time() if now is None else now
    current = totp.timecode(moment)
    for step in (current, current - 1, current + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step).encode(), code.strip().encode()):
            return step
    return None
