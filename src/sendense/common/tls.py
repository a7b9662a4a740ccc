"""TLS with a pinned certificate: the hub's self-signed API certificate, its
SHA-256 fingerprint, and SSL contexts for the clients that check it (the node at
enrollment, the CLI, the node's vCenter sessions).

Pinning fetches the server's certificate once, compares its SHA-256 with the
pin, then builds a context whose only trust anchor is that certificate (partial
chain): the connection that carries secrets verifies the same certificate in its
own handshake, so a server that swapped certificates in between is refused
before a byte of the request is sent.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sendense.common.errors import InvalidInput, SendenseError, Unavailable

CERT_DAYS = 3650  # pinned by fingerprint, not chained to a CA: no renewal dance


class CertificateMismatch(SendenseError):
    """The server presented a certificate other than the pinned one."""

    http_status = 502
    exit_code = 11
    code = "certificate_mismatch"


def normalize_fingerprint(value: str, what: str = "certificate fingerprint") -> str:
    """64 lower-case hex digits; colons, spaces and case are ignored."""
    cleaned = value.strip().removeprefix("sha256:").removeprefix("SHA256:")
    cleaned = cleaned.replace(":", "").replace(" ", "").lower()
    if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise InvalidInput(f"{what} must be a SHA-256 hex digest (64 hex digits)")
    return cleaned


def display_fingerprint(hex_digest: str) -> str:
    """`AB:CD:...`, as `openssl x509 -noout -fingerprint -sha256` prints it."""
    upper = hex_digest.upper()
    return ":".join(upper[i : i + 2] for i in range(0, len(upper), 2))


def der_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(pem: str) -> str:
    return der_fingerprint(ssl.PEM_cert_to_DER_cert(pem))


def cert_file_fingerprint(path: Path) -> str:
    """The SHA-256 of the first certificate in a PEM file (the served leaf)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read certificate {path}: {exc.strerror}") from exc
    try:
        cert = x509.load_pem_x509_certificates(data)[0]
    except ValueError as exc:
        raise InvalidInput(f"{path} holds no PEM certificate") from exc
    return der_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _san_entries(names: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        if not name or name in seen or name in ("0.0.0.0", "::"):
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def ensure_self_signed(cert_path: Path, key_path: Path, listen_host: str) -> bool:
    """Create an ECDSA P-256 key (0600) and a self-signed certificate naming the
    listen address, this machine and loopback, unless both files exist. True when
    they were created."""
    if cert_path.exists() and key_path.exists():
        return False
    names = [listen_host, socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sendense hub")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(_san_entries(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    partial = cert_path.with_name(cert_path.name + ".partial")
    partial.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    partial.replace(cert_path)  # whoever reads the certificate reads all of it
    return True


def fetch_certificate(host: str, port: int, what: str, timeout: float = 15) -> str:
    """The server's leaf certificate (PEM), unverified: only to compare with a pin.
    Nothing is sent but the TLS handshake."""
    try:
        return ssl.get_server_certificate((host, port), timeout=timeout)
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"{what} {host}:{port} does not answer TLS: {exc}") from exc


def trusting_exactly(pem: str) -> ssl.SSLContext:
    """A client context whose only trust anchor is this certificate (no host name
    check: the pin names the server, not DNS)."""
    ctx = ssl.create_default_context(cadata=pem)
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def pinned_context(host: str, port: int, expected_hex: str, what: str) -> ssl.SSLContext:
    """Fetch the certificate, compare it with the pin, trust exactly it."""
    pem = fetch_certificate(host, port, what)
    actual = pem_fingerprint(pem)
    if actual != expected_hex:
        raise CertificateMismatch(
            f"{what} {host}:{port} presented certificate {display_fingerprint(actual)}, "
            f"not the pinned {display_fingerprint(expected_hex)}"
        )
    return trusting_exactly(pem)


def ca_context(ca_file: Path) -> ssl.SSLContext:
    """Verify against a CA file (or the server's own certificate), host name included."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"cannot load CA file {ca_file}: {exc}") from exc
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def unverified_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
