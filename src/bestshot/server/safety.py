"""Small guards of the HTTP server: JSON-safe error bodies, lone surrogates, the Host allow-list and the
output folder's writability.

(The CLI side has its own non-finite / writable-folder checks; these are local to the server so that it
never depends on an import order. They may be unified later.)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import BestshotError

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
_MAX_ECHO = 1000  # characters of a string echoed back in an error body (our own messages name long paths)


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` with what JSON cannot carry made printable: NaN/Infinity → their names, lone surrogates →
    ``\\udXXX`` escapes, long strings cut (an error body never echoes a 10 MB prompt)."""
    if depth > 20:
        return "..."
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, str):
        s = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return s if len(s) <= _MAX_ECHO else s[:_MAX_ECHO] + f"... ({len(s)} characters)"
    if isinstance(value, bytes):
        return json_safe(value.decode("utf-8", "replace"), depth + 1)
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(json_safe(k, depth + 1)): json_safe(v, depth + 1) for k, v in items[:50]}
        if len(items) > 50:
            out["..."] = f"{len(items) - 50} more keys"
        return out
    if isinstance(value, (list, tuple, set)):
        seq = list(value)
        out_l = [json_safe(v, depth + 1) for v in seq[:50]]
        if len(seq) > 50:
            out_l.append(f"... {len(seq) - 50} more")
        return out_l
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return json_safe(str(value), depth + 1)


def surrogate_path(value: Any, path: str = "") -> str | None:
    """The path of the first string holding a lone UTF-16 surrogate (not encodable as UTF-8), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "value"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = surrogate_path(k, f"{path}.{k!s}" if path else "key") or surrogate_path(
                v, f"{path}.{k}" if path else str(k)
            )
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = surrogate_path(v, f"{path}[{i}]")
            if found:
                return found
    return None


def reject_surrogates(data: Any) -> Any:
    """A pydantic ``model_validator(mode="before")`` body: refuse text that is not valid Unicode."""
    bad = surrogate_path(data)
    if bad is not None:
        raise ValueError(f"{bad} holds a lone UTF-16 surrogate (e.g. \\ud800), which is not text — send valid UTF-8")
    return data


MAX_ITEMS = 1000  # items of one list, or keys of one object, in a request body


def oversized_path(value: Any, max_items: int = MAX_ITEMS, path: str = "") -> str | None:
    """The path of the first list or object in ``value`` holding more than ``max_items`` items, or None.

    Checked before validation: a model validates a list item by item and builds one error per bad item,
    so three million bad items meant three million error objects before any could be refused."""
    stack = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, dict):
            if len(v) > max_items:
                return p or "body"
            stack.extend((x, f"{p}.{k}" if p else str(k)) for k, x in v.items() if isinstance(x, (dict, list)))
        elif isinstance(v, list):
            if len(v) > max_items:
                return p or "body"
            stack.extend((x, f"{p}[{i}]") for i, x in enumerate(v) if isinstance(x, (dict, list)))
    return None


def unknown_keys(data: Any, model: Any) -> list[str]:
    """Keys of a request object that ``model`` (a pydantic model class) has no field for."""
    if not isinstance(data, dict):
        return []
    known = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    return [str(k) for k in data if k not in known]


def json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON (non-finite floats count as refused: a huge size)."""
    try:
        return len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return 1 << 60


# ---------------------------------------------------------------------------------- Host header


def allowed_hosts(host: str, configured: Iterable[str] | None) -> tuple[str, ...]:
    """The Host names accepted: the configured list, else localhost names plus ``host`` (any, when the
    server binds every interface: its names are not known)."""
    if configured:
        return tuple(h.strip().lower().strip("[]") for h in configured if h.strip())
    if host.strip() in WILDCARD_BINDS:
        return ("*",)
    return tuple(dict.fromkeys((*LOCAL_HOSTS, host.strip().lower().strip("[]"))))


def host_name(header: str) -> str:
    """``example.com:7860`` → ``example.com``; ``[::1]:7860`` → ``::1``."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class HostCheck:
    """ASGI middleware: 400 unless the Host header names this server (DNS-rebinding defence for the
    tokenless localhost default)."""

    def __init__(self, app: Any, allowed: tuple[str, ...]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        header = ""
        for k, v in scope.get("headers") or []:
            if k == b"host":
                header = v.decode("latin-1")
                break
        if host_name(header) in self.allowed:
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        detail = (
            f"Host {header!r} is not served here — use one of {', '.join(self.allowed)}, or start the server "
            "with --allowed-host NAME"
        )
        body = {"error": "InvalidHost", "detail": detail, "body": "", "errors": detail}
        await JSONResponse(json_safe(body), status_code=400)(scope, receive, send)


# ---------------------------------------------------------------------------------- output folder


def check_writable(folder: str | os.PathLike, what: str = "output folder", option: str = "--out-dir") -> Path:
    """The jobs' own check (:func:`bestshot.store.ensure_writable`), naming the serve option to change."""
    from ..store import ensure_writable

    try:
        return ensure_writable(folder, f"to the {what}")
    except BestshotError as e:
        raise BestshotError(f"the {what} is not writable: {e}; or pass another {option}") from None


__all__ = [
    "json_safe",
    "reject_surrogates",
    "oversized_path",
    "unknown_keys",
    "MAX_ITEMS",
    "surrogate_path",
    "json_size",
    "allowed_hosts",
    "host_name",
    "HostCheck",
    "check_writable",
]
