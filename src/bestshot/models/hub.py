"""Fail fast on a Hugging Face hub id that cannot be had: the one check before any hub load.

``from_pretrained("org/name")`` on a machine without network retries the hub for 50 s to over 2 minutes
before it raises. Every place that loads a hub id (pipelines, refiners, CLIP scorers, caption models)
first calls :func:`require_hub_model`:

1. a local path, or a repository already in the local Hugging Face cache, passes at once (no network);
2. otherwise, with ``HF_HUB_OFFLINE`` set, it is an error right away;
3. otherwise one quick probe (a TCP connection to the hub endpoint, bounded to a couple of seconds
   including the name lookup) decides: unreachable is an error right away, reachable lets the library
   download as usual.

Every error says how to fix it: download on a machine with network (``huggingface-cli download ID``,
then copy the cache), or pass a local folder.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from ..errors import BestshotError

PROBE_TIMEOUT_S = 2.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) as the user set it, read now."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_hub_id(source: str) -> bool:
    """``org/name`` as the hub spells ids (not ``./x``, ``/abs/x``, ``~/x`` or ``a/b/c``)."""
    return not source.startswith((".", "/", "~")) and bool(_HUB_ID.match(source))


def is_cached(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a snapshot of ``repo_id`` (no network access)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError, a bad id, an unreadable cache: not cached
        return False
    return True


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the hub endpoint, name lookup included, within ``timeout`` seconds."""
    url = urlparse(endpoint or hub_endpoint())
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def require_hub_model(source: str, what: str = "model", fix: str = "pass a local folder instead") -> None:
    """Return when ``source`` can be loaded without a long hub retry loop, else raise one clear error.

    ``source`` is a local path (always fine: loading reports a broken folder) or a hub id.
    """
    if Path(source).expanduser().exists() or not is_hub_id(source):
        return  # a local path, or a missing one (the loader names it): nothing to ask the hub
    if is_cached(source):
        return
    how = (
        f"download it on a machine with network (`huggingface-cli download {source}`) and copy the Hugging Face "
        f"cache here, or {fix}"
    )
    if hub_offline():
        raise BestshotError(
            f"{what} {source!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set — {how}"
        )
    endpoint = hub_endpoint()
    if not hub_reachable(endpoint):
        raise BestshotError(
            f"{what} {source!r} is not in the local Hugging Face cache and the hub ({endpoint}) "
            f"cannot be reached (no network?) — {how}"
        )


def require_model(ref) -> None:
    """:func:`require_hub_model` for a resolved :class:`~bestshot.models.registry.ModelRef` (local ones pass)."""
    if not ref.local:
        require_hub_model(ref.source, "model", "pass a local pipeline folder (--model ./folder) or --model embedded")


def require_scorer(spec: str | None) -> None:
    """:func:`require_hub_model` for a scorer spec (``embedded``, ``open_clip:...`` and local folders pass;
    ``+regions``/``+spatial`` suffixes are looked through), so a run fails before its pipeline loads."""
    from ..config import EMBEDDED, REGIONS, SPATIAL

    if not spec:
        return
    for suffix in (REGIONS, SPATIAL):
        if spec.endswith(suffix):
            spec = spec[: -len(suffix)]
    if spec == EMBEDDED or spec.startswith("open_clip:"):
        return
    require_hub_model(spec, "CLIP scorer", "pass --scorer with a local CLIP folder or 'embedded'")
