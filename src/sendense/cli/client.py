"""HTTP client of the hub API for the CLI; API errors become domain errors."""

from __future__ import annotations

import os
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

DEFAULT_HUB_URL = "http://127.0.0.1:8082"
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
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"hub at {self.url} does not answer: {exc}") from exc
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
            raise Unavailable(f"hub at {self.url}: {str(exc) or type(exc).__name__}") from exc

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body)


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
