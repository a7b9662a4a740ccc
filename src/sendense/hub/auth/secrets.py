"""Secrets the hub must use again later (a node's API token, a vCenter password),
sealed at rest with a key that lives only in the hub's data directory (0600).

A copy of the database alone reveals none of them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from sendense.common.errors import SendenseError
from sendense.common.logging import register_secret


class SecretBox:
    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(Fernet.generate_key())
        key = key_file.read_bytes().strip()
        self._fernet = Fernet(key)
        self._digest_key = hashlib.sha256(b"sendense digests\0" + key).digest()

    def seal(self, secret: str) -> str:
        register_secret(secret)
        return self._fernet.encrypt(secret.encode()).decode()

    def digest(self, text: str) -> str:
        """A keyed digest (HMAC-SHA256) of `text`: equal for equal texts, to be
        looked up, and of no use without this hub's key."""
        return hmac.new(self._digest_key, text.encode(), hashlib.sha256).hexdigest()

    def open(self, sealed: str) -> str:
        try:
            secret = self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise SendenseError(
                f"a stored secret does not open with {self.key_file}: was the key replaced?"
            ) from exc
        register_secret(secret)
        return secret
