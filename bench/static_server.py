"""A file served by the hub's own HTTP stack: the baseline of `http_raw_vs_static_file`.

    .venv/bin/python bench/static_server.py FILE PORT CERT KEY

The same FastAPI/uvicorn/TLS setup as `sendense hub serve` (cli/serving.py
`run_api`), one route: `GET /file`, Starlette's FileResponse of FILE.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from sendense.cli.serving import run_api


def main() -> None:
    path, port, cert, key = sys.argv[1:5]
    app = FastAPI()

    @app.get("/file")
    def get_file() -> FileResponse:
        return FileResponse(path, media_type="application/octet-stream")

    run_api(app, "127.0.0.1", int(port), (Path(cert), Path(key)))


if __name__ == "__main__":
    main()
