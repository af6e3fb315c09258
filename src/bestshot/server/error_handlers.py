"""The app's exception handlers: every error body in A1111's shape ``{"error", "detail", "body", "errors"}``,
always valid JSON (a refused NaN, Infinity or lone surrogate is echoed as text, never re-raised while
rendering the error). Bad input is 422, a full or read-only output folder 507 naming it, the rest 500."""

from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BestshotError, StorageError
from .safety import json_safe

log = logging.getLogger(__name__)
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def error_response(
    status: int,
    error: str,
    detail: Any,
    errors: Any = None,
    body: Any = "",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    content = {
        "error": error,
        "detail": detail,
        "body": body,
        "errors": errors if errors is not None else (detail if isinstance(detail, str) else ""),
        **extra,
    }
    return JSONResponse(json_safe(content), status_code=status, headers=headers)


async def bestshot_error(request: Request, exc: BestshotError) -> JSONResponse:
    if isinstance(exc, StorageError):  # the server's folder, not the request: 507 Insufficient Storage
        return error_response(507, type(exc).__name__, str(exc))
    return error_response(422, type(exc).__name__, str(exc), field=getattr(exc, "field", None))


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = [{k: v for k, v in e.items() if k != "ctx" and k != "url"} for e in exc.errors()[:10]]
    lines = "; ".join(
        f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}" for e in errs[:10]
    )
    return error_response(422, "RequestValidationError", errs, errors=lines)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, "HTTPException", exc.detail, headers=getattr(exc, "headers", None))


async def os_error(request: Request, exc: OSError) -> JSONResponse:
    if exc.errno in DISK_ERRNOS:
        from ..store import disk_error  # a write no route wrapped: still a 507 naming the file

        where = repr(exc.filename) if exc.filename else f"to {str(request.app.state.ctx.out_dir)!r}"
        return error_response(507, "StorageError", str(disk_error(exc, where)))
    return await unexpected(request, exc)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(
        500, type(exc).__name__, "internal error — the server log has the details", errors=str(exc)[:500]
    )


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BestshotError, bestshot_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(OSError, os_error)
    app.add_exception_handler(Exception, unexpected)


__all__ = ["add_error_handlers", "error_response"]
