"""Cross-origin access (CORS) for browser clients, with AUTOMATIC1111's flags.

A1111 adds Starlette's ``CORSMiddleware`` with every method and header and credentials allowed, for the
origins of ``--cors-allow-origins`` (comma-separated) and ``--cors-allow-origins-regex``. bestshot does
the same; with neither flag it allows the loopback origins (``http(s)://localhost``, ``127.0.0.1``,
``[::1]``, any port): a browser front-end served from this machine can read the answers, a page from
any other site cannot (A1111 allows none by default, so its users pass the flag for every local app).
"""

from __future__ import annotations

from typing import Any

LOOPBACK_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"


def cors_options(allow_origins: str | None = None, allow_origins_regex: str | None = None) -> dict[str, Any]:
    """CORSMiddleware's keyword arguments for the two flags (both None: the loopback default)."""
    origins = [o.strip() for o in (allow_origins or "").split(",") if o.strip()]
    regex = allow_origins_regex or None
    if not origins and regex is None:
        regex = LOOPBACK_ORIGINS
    return {
        "allow_origins": origins,
        "allow_origin_regex": regex,
        "allow_methods": ["*"],
        "allow_headers": ["*"],
        "allow_credentials": True,
    }


def add_cors(app: Any, allow_origins: str | None = None, allow_origins_regex: str | None = None) -> None:
    """Answer preflight ``OPTIONS`` requests and add ``Access-Control-Allow-Origin`` for the allowed origins."""
    import re

    from starlette.middleware.cors import CORSMiddleware

    from ..errors import BestshotError

    if allow_origins_regex:
        try:
            re.compile(allow_origins_regex)
        except re.error as e:
            raise BestshotError(
                f"--cors-allow-origins-regex {allow_origins_regex!r} is not a regular expression ({e})"
            ) from None
    app.add_middleware(CORSMiddleware, **cors_options(allow_origins, allow_origins_regex))
