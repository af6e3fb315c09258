"""Optional authentication: a bearer token, or AUTOMATIC1111's ``--api-auth user:pass`` basic auth.

With neither configured every route is open (the server binds to 127.0.0.1 by default). Comparisons
use :func:`hmac.compare_digest` on UTF-8 bytes. The gallery's static files carry no data and stay public; its
scripts send the token (from the page's ``#token=`` fragment) or let the browser do basic auth.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from fastapi import HTTPException, Request

from ..errors import BestshotError


@dataclass(frozen=True)
class Auth:
    token: str | None = None
    users: tuple[tuple[str, str], ...] = ()  # (user, password) pairs

    @classmethod
    def from_options(cls, token: str | None = None, api_auth: str | None = None) -> Auth:
        """``api_auth`` is A1111's format: ``user:pass`` pairs separated by commas."""
        users = []
        for pair in (api_auth or "").split(","):
            if not pair.strip():
                continue
            user, sep, password = pair.strip().partition(":")
            if not sep or not user or not password:
                raise BestshotError(f"--api-auth expects user:password[,user2:password2] (got {pair.strip()!r})")
            users.append((user, password))
        if token is not None and not token.strip():
            raise BestshotError("--token is empty — give a non-empty secret or leave the option out")
        return cls(token=token or None, users=tuple(users))

    @property
    def enabled(self) -> bool:
        return bool(self.token or self.users)

    def check(self, request: Request) -> None:
        """FastAPI dependency: 401 unless the request carries valid credentials."""
        if not self.enabled:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if self.token and scheme == "bearer" and hmac.compare_digest(_raw(value.strip()), self.token.encode("utf-8")):
            return
        if self.users and scheme == "basic" and self._basic_ok(value.strip()):
            return
        challenge = 'Basic realm="bestshot"' if self.users else "Bearer"
        raise HTTPException(
            status_code=401,
            detail="authentication required — send Authorization: "
            + ("Bearer <token>" if self.token else "Basic <user:pass>"),
            headers={"WWW-Authenticate": challenge},
        )

    def _basic_ok(self, value: str) -> bool:
        try:
            user, _, password = base64.b64decode(value, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        ok = False
        for u, p in self.users:  # no early exit: constant work whatever matches
            ok |= hmac.compare_digest(user, u.encode("utf-8")) & hmac.compare_digest(password, p.encode("utf-8"))
        return ok


def _raw(header_value: str) -> bytes:
    """The bytes a client sent: HTTP header values arrive decoded as Latin-1, so a UTF-8 token (e.g. "pässwörd")
    is compared as the UTF-8 bytes both sides hold."""
    try:
        return header_value.encode("latin-1")
    except UnicodeEncodeError:
        return header_value.encode("utf-8", "surrogateescape")
