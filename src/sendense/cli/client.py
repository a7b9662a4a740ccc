"""HTTP client of the hub API for the CLI; API errors become domain errors.

The hub is verified before the token is sent: with `SENDENSE_HUB_FINGERPRINT`
(the certificate's SHA-256 from `sendense hub pair`), `SENDENSE_HUB_CA` (a CA or
the hub's own certificate file, host name checked) or else the system's CAs.
Plain `http://` is accepted for a loopback hub only."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from sendense.common.errors import (
    Conflict,
    Forbidden,
    InsufficientSpace,
    InvalidInput,
    NotFound,
    PoolExhausted,
    SendenseError,
    TooManyAttempts,
    Unauthorized,
    Unavailable,
)
from sendense.common.tls import ca_context, is_loopback, normalize_fingerprint, pinned_context

DEFAULT_HUB_URL = "https://127.0.0.1:8082"
_BY_STATUS: dict[int, type[SendenseError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
    429: TooManyAttempts,
    503: PoolExhausted,
    507: InsufficientSpace,
}


def read_token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            return token_file.read_text().strip()
        except OSError as exc:
            raise InvalidInput(f"cannot read token file {token_file}: {exc.strerror}") from exc
    return os.environ.get("SENDENSE_TOKEN")


class HubClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.url = (url or os.environ.get("SENDENSE_HUB_URL") or DEFAULT_HUB_URL).rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, verify=hub_verification(self.url)
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"hub at {self.url} does not answer: {_why(exc)}") from exc
        _raise_for_status(response)
        return response.json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A response whose body is read as it comes (downloads); errors as in `request`."""
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_status(response)
                yield response
        except httpx.HTTPError as exc:
            raise Unavailable(f"hub at {self.url}: {_why(exc)}") from exc

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body)


def hub_verification(url: str) -> ssl.SSLContext | bool:
    """How the hub's certificate is checked, from the environment; fetching a pinned
    certificate sends nothing but a TLS handshake."""
    parsed = httpx.URL(url)
    fingerprint = os.environ.get("SENDENSE_HUB_FINGERPRINT", "").strip()
    ca_file = os.environ.get("SENDENSE_HUB_CA", "").strip()
    if parsed.scheme == "http":
        if not is_loopback(parsed.host):
            raise InvalidInput(f"refusing to send a token in clear to {parsed.host}: use https://")
        return False
    if parsed.scheme != "https" or not parsed.host:
        raise InvalidInput(f"hub URL {url!r}: use https://HOST:PORT")
    if fingerprint and ca_file:
        raise InvalidInput("set SENDENSE_HUB_FINGERPRINT or SENDENSE_HUB_CA, not both")
    if fingerprint:
        pin = normalize_fingerprint(fingerprint, "SENDENSE_HUB_FINGERPRINT")
        return pinned_context(parsed.host, parsed.port or 443, pin, "hub")
    if ca_file:
        return ca_context(Path(ca_file))
    return True


def _why(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"{text} (pin the hub's certificate: SENDENSE_HUB_FINGERPRINT as "
            "`sendense hub pair` prints it, or SENDENSE_HUB_CA)"
        )
    return text


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = str(response.json().get("message", response.text))
    except ValueError:
        message = response.text or response.reason_phrase
    error = _BY_STATUS.get(response.status_code, SendenseError)
    if response.status_code == 503 and "port" not in message:
        error = Unavailable
    raise error(message)
