"""Request bodies: capped before they are read, read as JSON whatever their Content-Type says, and memory
given back after a large request.

:class:`BodyLimit` is ASGI middleware: a request whose ``Content-Length`` is over the cap is answered 413
before a byte of its body is read; a body sent without a length (chunked) is counted as it streams in and
refused the moment it passes the cap. The 413 has A1111's error shape. ``bestshot serve --max-body-mb``
sets the cap (the default fits a few 2048² images in base64).

After a request or response of more than ``trim_after`` bytes it calls :func:`release_memory`: Python
frees the request's buffers, but glibc keeps the freed pages of its heap (a 1 GB upload left the process
gigabytes larger for good); ``malloc_trim(0)`` hands them back to the system.

:class:`JSONBodies`: some clients post JSON with no ``Content-Type`` (or a browser ``fetch`` with a string
body, which sends ``text/plain``; curl's ``-d`` sends ``application/x-www-form-urlencoded``). FastAPI
parses a body as JSON only when it is labelled JSON and otherwise refuses it ("Input should be a valid
dictionary"); no route here takes form data, so such bodies are relabelled ``application/json`` before
routing. A body that is not JSON still gets a 422 naming the JSON error.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from typing import Any

from starlette.exceptions import HTTPException

TRIM_AFTER = 8 << 20  # bytes in or out after which the request's memory is handed back


class BodyTooLarge(HTTPException):
    """413: FastAPI lets an HTTPException raised while reading the body through to the app's handler."""

    def __init__(self, limit: int, seen: int | None = None):
        got = f"{seen} bytes" if seen is not None else "more"
        super().__init__(
            413,
            f"request body of {got} is larger than this server's {limit / 2**20:g} MB "
            "(bestshot serve --max-body-mb) — send smaller images or fewer of them",
        )


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (None: no cap), memory trimmed after big requests."""

    def __init__(self, app: Any, max_bytes: int | None, trim_after: int = TRIM_AFTER):
        self.app, self.max_bytes, self.trim_after = app, max_bytes, trim_after

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _content_length(scope)
        if limit is not None and declared is not None and declared > limit:
            await _refuse(BodyTooLarge(limit, declared), scope, receive, send)  # nothing of the body was read
            return
        seen = sent = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if limit is not None and seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def counted_send(message: dict) -> None:
            nonlocal sent, started
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counted_receive, counted_send)
        except BodyTooLarge as e:
            if started:
                raise
            await _refuse(e, scope, receive, send)
        finally:
            if max(seen, declared or 0, sent) > self.trim_after:
                await asyncio.to_thread(release_memory)


def _content_length(scope: dict) -> int | None:
    for k, v in scope.get("headers") or []:
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


async def _refuse(exc: BodyTooLarge, scope: dict, receive: Any, send: Any) -> None:
    from starlette.responses import JSONResponse

    body = {"error": "RequestTooLarge", "detail": exc.detail, "body": "", "errors": exc.detail}
    # the unread body is left on the connection: close it rather than let the client keep it alive
    await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)


_LIBC: Any = None


def release_memory() -> bool:
    """Collect garbage and hand freed heap pages back to the system (``malloc_trim`` on glibc); returns
    whether the trim ran (False on other C libraries, where only the collection happens)."""
    global _LIBC
    gc.collect()
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to trim
            _LIBC = False
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)
    return True


RELABELLED = (b"", b"text/plain", b"application/x-www-form-urlencoded")
_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class JSONBodies:
    """ASGI middleware: an unlabelled, text/plain or form-urlencoded request body is labelled JSON."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") in _METHODS:
            headers = list(scope.get("headers") or [])
            kinds = [v.split(b";")[0].strip().lower() for k, v in headers if k == b"content-type"]
            if not kinds or kinds[0] in RELABELLED:
                headers = [(k, v) for k, v in headers if k != b"content-type"] + [
                    (b"content-type", b"application/json")
                ]
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


__all__ = ["BodyLimit", "BodyTooLarge", "JSONBodies", "release_memory"]
