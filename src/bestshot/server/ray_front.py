"""The front of ``bestshot serve --ray``: a light ingress that relays each HTTP request to a replica, so that a
request whose replica dies (killed, out of memory, node lost) still gets an answer in A1111's error shape.

Serve's HTTP proxy answers a request whose replica died with a plain-text 500 (``ActorDiedError`` text),
and has no hook to change that. So the proxy talks to :class:`Front` (no CPU, one replica), which reads the
request, streams it to a replica's :meth:`Relay.relay` through a Serve deployment handle (Serve's router
picks the replica and applies its backpressure), and passes the response's ASGI messages back as they
come. When the replica is lost before the response started, the client gets a 503 with the A1111 error body
(``ReplicaLost``: the job is lost, send it again); Serve's backpressure becomes the app's usual 429.

:class:`Relay` is what a replica mixes in: it runs the ordinary app in-process on the relayed request (the
app's own Host check, authentication and routes, unchanged) and starts and stops the app's job queue as the
app's lifespan does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)

SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "root_path",
    "query_string",
    "headers",
    "client",
    "server",
)


def plain_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """The picklable part of an HTTP scope (what the app needs; no app, router or state objects)."""
    out = {k: scope[k] for k in SCOPE_KEYS if k in scope}
    out["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])]
    out["root_path"] = ""
    return out


def error_messages(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> list[dict]:
    """The ASGI messages of a JSON response in A1111's error shape."""
    body = json.dumps({"error": error, "detail": detail, "body": "", "errors": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return [
        {"type": "http.response.start", "status": status, "headers": head},
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


def answer_for(exc: BaseException) -> list[dict]:
    """What the client gets when the relay failed before the response started."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, RayActorError):
        return error_messages(
            503,
            "ReplicaLost",
            "the replica running this request stopped (it was killed, ran out "
            "of memory or lost its node): the request is lost — send it again",
            {"Retry-After": "5"},
        )
    if isinstance(exc, BackPressureError):
        return error_messages(429, "QueueFull", "the server's queue is full — retry later", {"Retry-After": "5"})
    if isinstance(exc, DeploymentUnavailableError):
        return error_messages(503, "Unavailable", "no replica is running — retry later", {"Retry-After": "5"})
    return error_messages(
        500,
        type(exc).__name__,
        f"the request failed on its replica: {str(exc).strip()[:300]} — see the replica log (`ray logs`)",
    )


class Front:
    """The ingress deployment: relays every HTTP request to the replicas (see the module docstring)."""

    def __init__(self, replicas: Any) -> None:
        self.replicas = replicas  # a DeploymentHandle of the replica deployment

    def __serve_build_asgi_app__(self):
        from starlette.applications import Starlette
        from starlette.routing import Mount

        return Starlette(routes=[Mount("/", app=self.asgi)])

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            for message in error_messages(404, "NotFound", "only HTTP requests are served here"):
                await send(message)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        started = False
        try:
            async for message in self.replicas.options(stream=True).relay.remote(plain_scope(scope), b"".join(chunks)):
                started = started or message["type"] == "http.response.start"
                await send(message)
        except Exception as exc:  # any failure of the replica or its handle
            if started:  # the status line is out: nothing to do but end the response
                log.warning("a response was cut off: %s", type(exc).__name__)
                raise
            log.warning("relayed request failed: %s", type(exc).__name__)
            for message in answer_for(exc):
                await send(message)


class Relay:
    """Mixed into the replica class: ``self.app`` (built in the constructor) answers relayed requests."""

    app: Any

    def start_app(self, app: Any) -> None:
        self.app = app
        app.state.jobs.start()  # what the app's lifespan does on startup

    def __del__(self) -> None:  # Serve calls it when the replica stops: queued jobs 503, the running one stops
        app = getattr(self, "app", None)
        if app is not None:
            app.state.jobs.shutdown()
            app.state.jobs.close(8)

    async def relay(self, scope: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
        """Run one request through the app; yields the ASGI messages it sends."""
        queue: asyncio.Queue = asyncio.Queue()
        pending: list[bytes] = [body]

        async def receive() -> dict[str, Any]:
            if pending:
                return {"type": "http.request", "body": pending.pop(), "more_body": False}
            await asyncio.Event().wait()  # the client stays until the response is done (then this is cancelled)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await queue.put(message)

        task = asyncio.ensure_future(self.app(scope, receive, send))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                    continue
                getter.cancel()
                while not queue.empty():
                    yield queue.get_nowait()
                task.result()  # the app's own error, if it raised
                return
        finally:
            if not task.done():  # the client went away: stop the request
                task.cancel()


__all__ = ["Front", "Relay", "answer_for", "error_messages", "plain_scope"]
