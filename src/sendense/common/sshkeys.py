"""Ed25519 SSH keys for the tunnel: made with `cryptography`, stored in OpenSSH
format (0600), shown by their OpenSSH SHA256 fingerprint; and the enrollment's
proof that the node holds the private key of the public key it sends."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sendense.common.errors import InvalidInput, Unauthorized

ENROLL_CONTEXT = b"sendense-node-enrollment-v1"


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


def pairing_digest(code: str) -> str:
    """The pairing code as the hub stores it: SHA-256 of its letters, dashes and
    case ignored."""
    return hashlib.sha256(code.replace("-", "").strip().upper().encode()).hexdigest()


def enrollment_challenge(
    code: str, node_name: str, public_key: str, hub_cert_sha256: str | None
) -> bytes:
    """What the node signs to enroll: the pairing code (single use, so a signature
    is never good twice), the name and key it enrolls, and the hub certificate it
    sees (a man in the middle presents another: the hub refuses the signature)."""
    key = " ".join(public_key.split()[:2])
    cert = (hub_cert_sha256 or "").replace(":", "").lower()
    parts = [ENROLL_CONTEXT, pairing_digest(code).encode(), node_name.encode(), key.encode()]
    return b"\0".join([*parts, cert.encode()])


def sign(private_path: Path, message: bytes) -> str:
    """The node's ed25519 signature of `message`, base64."""
    key = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{private_path} is not an ed25519 key")
    return base64.b64encode(key.sign(message)).decode()


def verify(public_key: str, message: bytes, signature: str | None) -> None:
    """Raises `Unauthorized` unless `signature` is the ed25519 signature of
    `message` by the private key of `public_key`."""
    if not signature:
        raise Unauthorized(
            "the enrollment carries no signature by the node's key: "
            "update the node's Sendense and enroll again"
        )
    try:
        key = serialization.load_ssh_public_key(" ".join(public_key.split()[:2]).encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidInput("public key must be in OpenSSH format: 'ssh-ed25519 AAAA...'") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput("the node's key must be an ed25519 key ('ssh-ed25519 AAAA...')")
    try:
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError) as exc:
        raise Unauthorized(
            "the enrollment's signature does not match the node's public key: "
            "a node proves it holds the private key of the key it enrolls"
        ) from exc


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
