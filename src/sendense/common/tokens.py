"""API tokens: 256 random bits, shown once, kept only as SHA-256 (their entropy makes a
slow password hash pointless)."""

from __future__ import annotations

import hashlib
import secrets

from sendense.common.logging import register_secret


def new_token(prefix: str) -> str:
    token = prefix + secrets.token_urlsafe(32)
    register_secret(token)
    return token


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
