"""Connecting to Ray: a local Ray on this machine, or an existing cluster by address.

``--ray`` with no address starts (or joins) a local Ray; ``--ray ADDRESS`` joins a cluster: ``auto`` (the
``RAY_ADDRESS`` environment variable or the cluster this machine belongs to) or ``HOST:PORT`` (the head's GCS,
port 6379 by default). Ray Client addresses (``ray://``) are refused: Ray Data, which the batch commands
run on, needs a driver that is part of the cluster.

Joining fails within ``timeout_s`` seconds (``BESTSHOT_RAY_CONNECT_TIMEOUT_S``, 20 by default) with one line
that says what to do, instead of Ray's own retries: a TCP probe (nothing listens: refused at once), then one
GCS call in a child process (a head with token authentication that refuses this process's token answers
within a second or two; something that is no Ray head never answers), then ``ray.init``.

Token authentication (Ray 2.60): ``ray start --head`` turns it on when ``RAY_AUTH_MODE=token`` is set or a
token file exists (``~/.ray/auth_token``, made by ``ray get-auth-token --generate`` or by a local
``ray.init``). A driver or node that joins by an explicit address sends the token only when it has
``RAY_AUTH_MODE=token`` and the head's token (``RAY_AUTH_TOKEN``, a file named by ``RAY_AUTH_TOKEN_PATH``,
or ``~/.ray/auth_token``); ``--ray auto`` turns token mode on by itself when a token file is there.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from ..errors import BestshotError

INSTALL_HINT = "install it with: pip install 'bestshot[ray]' (or: bash scripts/install.sh --ray)"
LOCAL = "local"
TIMEOUT_ENV = "BESTSHOT_RAY_CONNECT_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 20.0
CLIENT_REFUSED = (
    "Ray Client addresses (ray://) are not supported: Ray Data needs a driver inside the cluster — "
    "give the head's GCS address instead (--ray HEAD:6379, from a machine that reaches the cluster's "
    "nodes), or run bestshot on the head (--ray auto) or as a Ray job (ray job submit -- bestshot ...)"
)


def require_ray() -> Any:
    """The ``ray`` module, or a BestshotError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BestshotError(f"--ray needs Ray, which is not installed — {INSTALL_HINT}") from None
    return ray


def connect_timeout(default: float = DEFAULT_TIMEOUT_S) -> float:
    """Seconds a join may take: ``BESTSHOT_RAY_CONNECT_TIMEOUT_S``, else ``default``."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise BestshotError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds > 0 — e.g. {TIMEOUT_ENV}=30")
    return seconds


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` to probe for an explicit address; None for ``local`` / ``auto``."""
    if address in ("", LOCAL, "auto"):
        return None
    if address.startswith("ray://"):
        raise BestshotError(f"--ray {address}: {CLIENT_REFUSED}")
    if "://" in address:
        raise BestshotError(
            f"--ray {address!r}: unknown scheme — give HOST:PORT (the head's GCS, e.g. "
            "10.0.0.5:6379), auto, or no address for a local Ray"
        )
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    host = host.strip("[]")
    if not host:
        raise BestshotError(f"--ray {address!r}: no host — give HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        return host, int(port) if port else 6379
    except ValueError:
        raise BestshotError(f"--ray {address!r}: the port {port!r} is not a number — give HOST:PORT") from None


def resolve_auto() -> str:
    """The ``HOST:PORT`` that ``--ray auto`` joins (``RAY_ADDRESS``, else the last ``ray start`` on this
    machine, else a GCS running here), or a BestshotError when there is none."""
    from ray._private import services

    try:
        found = services.get_ray_address_from_environment("auto", None)
    except ConnectionError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise BestshotError(
            f"--ray auto found no Ray cluster on this machine ({first}) — start one with "
            "`ray start --head`, set RAY_ADDRESS=HEAD:6379, or use plain --ray for a local Ray"
        ) from None
    return found


def probe(address: str, timeout_s: float = DEFAULT_TIMEOUT_S, *, shown: str | None = None) -> None:
    """Fail fast (≤ ``timeout_s``) when nothing listens at ``address`` (HOST:PORT)."""
    target = parse_address(address)
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        via = f" (found by {shown}: a Ray that ran here and is gone?)" if shown else ""
        raise BestshotError(
            f"cannot reach the Ray cluster at {address}{via}: {exc.strerror or exc} — start its head with "
            "`ray start --head`, check the address and firewall, or leave the address out "
            "(plain --ray) to run a local Ray on this machine"
        ) from None


def token_source() -> str | None:
    """Where this process would read a Ray auth token from (the env var or file), or None."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path:
        return f"RAY_AUTH_TOKEN_PATH={path}"
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def auth_advice(address: str) -> str:
    """One line: the cluster at ``address`` refused this process's (missing or wrong) token, and the fix."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    source = token_source()
    head = (
        "the head's token (`ray get-auth-token` on the head prints it): set RAY_AUTH_TOKEN=THAT, or copy the "
        "head's ~/.ray/auth_token here, or point RAY_AUTH_TOKEN_PATH at a file with it"
    )
    if mode != "token":
        have = (
            f"; a token is at hand ({source}), but Ray sends it to an explicit address only in token mode"
            if source
            else ""
        )
        return (
            f"the Ray cluster at {address} uses token authentication and this process sent no token — set "
            f"RAY_AUTH_MODE=token and give it {head}{have}"
        )
    where = source or "none found"
    return (
        f"the Ray cluster at {address} refused this process's auth token (from {where}): it is not the head's "
        f"— give it {head}"
    )


_CHECK = """import sys
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
if sys.argv[2] == "auto":
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
try:
    GcsClient(address=sys.argv[1])
except AuthenticationError:
    sys.exit(3)
except Exception:
    sys.exit(4)
"""


def _gcs_check(address: str, timeout_s: float, auto: bool = False) -> None:
    """One GCS call to ``address`` (HOST:PORT), in a child process that is ended at ``timeout_s`` (Ray's client
    cannot be cancelled, and one left running in a thread crashes the interpreter at exit): BestshotError when
    the head refuses our token or does not answer; returns when it answers. ``auto``: token mode as
    ``ray.init(address="auto")`` sets it (on when a token file is at hand)."""
    import subprocess
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHECK, address, "auto" if auto else "-"],
            capture_output=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise BestshotError(_no_head(address, timeout_s)) from None
    if done.returncode == 3:
        raise BestshotError(auth_advice(address))


def _no_head(address: str, timeout_s: float) -> str:
    return (
        f"no Ray cluster answered at {address} within {timeout_s:g} s (something accepts connections there but "
        "is not a Ray head) — check the address and port (`ray status` on the head prints it; the GCS port is "
        f"6379 by default), raise {TIMEOUT_ENV}, or leave the address out (plain --ray) to run a local Ray"
    )


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    timeout_s: float | None = None,
) -> Any:
    """Initialise Ray once per process and return the module.

    ``address`` None / ``local``: a local Ray sized by ``num_cpus`` / ``num_gpus`` (all of the machine's by
    default). Already initialised (a test's cluster, a Ray job's driver): reused as it is. ``timeout_s``:
    how long a join may take (default :func:`connect_timeout`).
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address or LOCAL
    timeout_s = connect_timeout() if timeout_s is None else timeout_s
    kwargs: dict[str, Any] = dict(include_dashboard=False, configure_logging=False, log_to_driver=False)
    if address == LOCAL:
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus)
        if os.environ.get("RAY_ADDRESS"):
            kwargs["address"] = "auto"
    else:
        parse_address(address)  # a bad address or ray:// fails before Ray is asked
        kwargs["address"] = address
    if "address" not in kwargs:  # a local Ray: started here, nothing to wait for (and Ray wants the main thread)
        _init(ray, kwargs, address)
        return ray
    target = address
    if kwargs["address"] == "auto":
        target = resolve_auto()
        probe(target, timeout_s, shown="RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "--ray auto")
    else:
        probe(target, timeout_s)
    _init_with_deadline(ray, kwargs, target, timeout_s)
    return ray


def _init_with_deadline(ray: Any, kwargs: dict[str, Any], address: str, timeout_s: float) -> None:
    """One GCS call (:func:`_gcs_check`: a head that refuses our token answers at once, one line on what to
    set; a server that accepts the connection but is no Ray GCS never answers), then ``ray.init(**kwargs)``,
    all within ``timeout_s``.

    ``ray.init`` runs in a daemon thread; on time-out it is left behind (Ray has no way to cancel it) and the
    error ends the command."""
    import threading
    import time

    deadline = time.monotonic() + timeout_s
    _gcs_check(address, timeout_s, auto=kwargs["address"] == "auto")
    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="bestshot-ray-init", daemon=True)
    t.start()
    t.join(max(deadline - time.monotonic(), 5.0))
    if t.is_alive():
        raise BestshotError(_no_head(address, timeout_s))
    if "error" in box:
        _raise(box["error"], address)


def _init(ray: Any, kwargs: dict[str, Any], address: str) -> None:
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - sorted by _raise
        _raise(exc, address)


def _raise(exc: BaseException, address: str) -> None:
    if isinstance(exc, BestshotError):
        raise exc
    from ray.exceptions import AuthenticationError

    if isinstance(exc, AuthenticationError):
        raise BestshotError(auth_advice(address)) from None
    if isinstance(exc, (ConnectionError, TimeoutError, RuntimeError, ValueError)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BestshotError(
            f"could not start or join Ray at {address}: {first} — check the address "
            "(`ray status` on the head shows it) or leave it out for a local Ray"
        ) from None
    raise exc
