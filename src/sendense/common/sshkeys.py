"""Ed25519 SSH keys for the tunnel: made with `cryptography`, stored in OpenSSH
format (0600), shown by their OpenSSH SHA256 fingerprint."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sendense.common.errors import InvalidInput


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_key: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)


def fingerprint(public_key: str) -> str:
    """OpenSSH's `SHA256:...` fingerprint of an `ssh-ed25519 AAAA...` line."""
    parts = public_key.split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
        raise InvalidInput("public key must be in OpenSSH format: 'ssh-ed25519 AAAA...'")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError as exc:
        raise InvalidInput("public key is not valid base64") from exc
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def ensure_keypair(private_path: Path, comment: str) -> KeyPair:
    """Load the key at `private_path`, or make one (private 0600, public beside it)."""
    public_path = private_path.with_name(private_path.name + ".pub")
    if not private_path.exists():
        private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        public_path.write_text(f"{public.decode()} {comment}\n")
    return KeyPair(private_path, public_path.read_text().strip())
