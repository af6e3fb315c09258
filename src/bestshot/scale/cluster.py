"""Connecting to Ray: a local Ray on this machine, or an existing cluster by address.

``--ray`` with no address starts (or joins) a local Ray; ``--ray ADDRESS`` joins a cluster: ``auto`` (the
``RAY_ADDRESS`` environment variable or the cluster this machine belongs to), ``HOST:PORT`` (the head's GCS,
port 6379 by default) or ``ray://HOST:PORT`` (Ray Client, port 10001). An unreachable address fails after
a TCP probe of at most ``timeout_s`` seconds with a message that says what to do, instead of Ray's own
retries (which take minutes).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from ..errors import BestshotError

INSTALL_HINT = "install it with: pip install 'bestshot[ray]' (or: bash scripts/install.sh --ray)"
LOCAL = "local"


def require_ray() -> Any:
    """The ``ray`` module, or a BestshotError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BestshotError(f"--ray needs Ray, which is not installed — {INSTALL_HINT}") from None
    return ray


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` to probe for an explicit address; None for ``local`` / ``auto``."""
    if address in ("", LOCAL, "auto"):
        return None
    rest, default_port = address, 6379
    if rest.startswith("ray://"):
        rest, default_port = rest[len("ray://"):], 10001
    elif "://" in rest:
        raise BestshotError(f"--ray {address!r}: unknown scheme — give HOST:PORT, ray://HOST:PORT, auto, "
                            "or no address for a local Ray")
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    host = host.strip("[]")
    if not host:
        raise BestshotError(f"--ray {address!r}: no host — give HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise BestshotError(f"--ray {address!r}: the port {port!r} is not a number — give HOST:PORT") from None


def probe(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast (≤ ``timeout_s``) when nothing listens at ``address``."""
    target = parse_address(address)
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise BestshotError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}) — start its head with "
            "`ray start --head`, check the address and firewall, or leave the address out "
            "(plain --ray) to run a local Ray on this machine") from None


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            timeout_s: float = 10.0) -> Any:
    """Initialise Ray once per process and return the module.

    ``address`` None / ``local``: a local Ray sized by ``num_cpus`` / ``num_gpus`` (all of the machine's by
    default). Already initialised (a test's cluster, a Ray job's driver): reused as it is.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address or LOCAL
    kwargs: dict[str, Any] = dict(include_dashboard=False, configure_logging=False, log_to_driver=False)
    if address == LOCAL:
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus)
        if os.environ.get("RAY_ADDRESS"):
            kwargs["address"] = "auto"
    else:
        probe(address, timeout_s)
        kwargs["address"] = address
    if "address" not in kwargs:  # a local Ray: started here, nothing to wait for (and Ray wants the main thread)
        _init(ray, kwargs, address)
    else:
        _init_with_deadline(ray, kwargs, address, timeout_s)
    return ray


def _init_with_deadline(ray: Any, kwargs: dict[str, Any], address: str, timeout_s: float) -> None:
    """``ray.init(**kwargs)`` bounded by ``timeout_s``: a server that accepts the connection but is no Ray
    GCS (a proxy, another service on the port) makes Ray retry for minutes; give up with a clear error.

    ``ray.init`` runs in a daemon thread; on time-out it is left behind (Ray has no way to cancel it) and
    the error ends the command."""
    import threading

    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="bestshot-ray-init", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise BestshotError(f"no Ray cluster answered at {address} within {timeout_s:g} s (something accepts "
                            "connections there but is not a Ray head) — check the address and port (`ray status` "
                            "on the head prints it; the GCS port is 6379 by default), or leave the address out "
                            "(plain --ray) to run a local Ray")
    if "error" in box:
        _raise(box["error"], address)


def _init(ray: Any, kwargs: dict[str, Any], address: str) -> None:
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - sorted by _raise
        _raise(exc, address)


def _raise(exc: BaseException, address: str) -> None:
    if isinstance(exc, (ConnectionError, TimeoutError, RuntimeError, ValueError)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BestshotError(f"could not start or join Ray at {address}: {first} — check the address "
                            "(`ray status` on the head shows it) or leave it out for a local Ray") from None
    raise exc
