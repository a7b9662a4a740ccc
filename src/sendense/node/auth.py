"""The node's API tokens: digests in `<data_dir>/api-tokens`, one `name digest` a line.
The node keeps no database; this file is its only credential store."""

from __future__ import annotations

import hmac
import os
import tempfile
from pathlib import Path

from sendense.common.errors import Unauthorized
from sendense.common.tokens import new_token, token_digest

PREFIX = "sdn_"


class NodeTokens:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "api-tokens"

    def _entries(self) -> list[tuple[str, str]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [tuple(line.split(" ", 1)) for line in lines if " " in line]  # type: ignore[misc]

    def count(self) -> int:
        return len(self._entries())

    def create(self, name: str) -> str:
        token = new_token(PREFIX)
        entries = [*self._entries(), (name, token_digest(token))]
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".api-tokens-")
        with os.fdopen(fd, "w") as handle:
            handle.writelines(f"{n} {d}\n" for n, d in entries)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        return token

    def verify(self, token: str | None) -> str:
        if not token:
            raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")
        digest = token_digest(token)
        for name, known in self._entries():
            if hmac.compare_digest(known, digest):
                return name
        raise Unauthorized("API token is not valid")
