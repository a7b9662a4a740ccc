"""Every error leaves the API as JSON `{"error": code, "message": text}`."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from fastapi.security.base import SecurityBase
from starlette.exceptions import HTTPException

from sendense.common.errors import SendenseError, TooManyAttempts

log = logging.getLogger(__name__)


def _body(code: str, message: str, status: int) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


_bearer = HTTPBearer(auto_error=False)


def _takes_token(dependant: Dependant) -> bool:
    return isinstance(dependant.call, SecurityBase) or any(
        _takes_token(d) for d in dependant.dependencies
    )


async def _refusal(
    request: Request, authenticate: Callable[[str | None], object]
) -> SendenseError | None:
    """Why the caller of a route that takes a token is not authenticated, or None.

    FastAPI parses a JSON body before it runs a route's dependencies, so a body
    that is not JSON (422) or not even text (400) would be answered so to anybody:
    such an answer waits for the same check the route's own dependency makes."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not _takes_token(route.dependant):
        return None
    credentials = await _bearer(request)
    try:
        await run_in_threadpool(authenticate, credentials.credentials if credentials else None)
    except SendenseError as exc:
        return exc
    return None


def install_error_handlers(
    app: FastAPI,
    mapped: dict[type[Exception], tuple[int, str]] | None = None,
    authenticate: Callable[[str | None], object] | None = None,
) -> None:
    """`mapped`: errors of layers that know no HTTP (NBD) -> (status, code);
    `authenticate`: the token check of the routes that take one (raises
    Unauthorized), run before a request is told its body is not JSON."""
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
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        unparsed = any(err.get("type") == "json_invalid" for err in exc.errors())
        if unparsed and authenticate is not None:
            refused = await _refusal(request, authenticate)
            if refused is not None:
                return _body(refused.code, refused.message, refused.http_status)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body')}: {err['msg']}"
            for err in exc.errors()
        )
        return _body("invalid_input", problems or "invalid request", 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # 400: FastAPI could not read the body at all (not UTF-8, say)
        if exc.status_code == 400 and authenticate is not None:
            refused = await _refusal(request, authenticate)
            if refused is not None:
                return _body(refused.code, refused.message, refused.http_status)
        code = "too_large" if exc.status_code == 413 else "http_error"
        return _body(code, str(exc.detail), exc.status_code)
