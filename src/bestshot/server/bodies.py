"""Request bodies read as JSON whatever their Content-Type says, as AUTOMATIC1111 clients expect.

Some clients post JSON with no ``Content-Type`` (or a browser ``fetch`` with a string body, which sends
``text/plain``; curl's ``-d`` sends ``application/x-www-form-urlencoded``). FastAPI parses a body as JSON
only when it is labelled JSON and otherwise refuses it ("Input should be a valid dictionary"); no route
here takes form data, so such bodies are relabelled ``application/json`` before routing. A body that is
not JSON still gets a 422 naming the JSON error.
"""

from __future__ import annotations

from typing import Any

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
                headers = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", b"application/json")]
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
