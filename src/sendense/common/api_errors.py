"""Every error leaves the API as JSON `{"error": code, "message": text}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from sendense.common.errors import SendenseError, TooManyAttempts

log = logging.getLogger(__name__)


def _body(code: str, message: str, status: int) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def install_error_handlers(
    app: FastAPI, mapped: dict[type[Exception], tuple[int, str]] | None = None
) -> None:
    """`mapped`: errors of layers that know no HTTP (NBD) -> (status, code)."""
    for error_type, (status, code) in (mapped or {}).items():

        async def layer_error(
            _request: Request, exc: Exception, status: int = status, code: str = code
        ) -> JSONResponse:
            if status >= 500:
                log.error("request failed: %s", exc)
            return _body(code, str(exc), status)

        app.add_exception_handler(error_type, layer_error)

    @app.exception_handler(SendenseError)
    async def domain_error(_request: Request, exc: SendenseError) -> JSONResponse:
        if exc.http_status >= 500:
            log.error("request failed: %s", exc.message)
        response = _body(exc.code, exc.message, exc.http_status)
        if isinstance(exc, TooManyAttempts):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body')}: {err['msg']}"
            for err in exc.errors()
        )
        return _body("invalid_input", problems or "invalid request", 422)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        code = "too_large" if exc.status_code == 413 else "http_error"
        return _body(code, str(exc.detail), exc.status_code)
