"""``bestshot serve --ray``: the same FastAPI app (A1111 routes, native routes, auth, gallery) on Ray Serve, one
replica per GPU.

Each replica builds the ordinary app with :func:`bestshot.server.app.create_app` in its own process (nothing
of the app is pickled). Serve's HTTP proxy hands every request to a light ingress,
:class:`bestshot.server.ray_front.Front`, which relays it unchanged to a replica and streams the answer back:
the app's own Host check and authentication run in the replica, for every route, and a request whose replica
dies is answered in A1111's error shape (503 ``ReplicaLost``) instead of Serve's plain-text 500.

What the replicas share:

* **the queue bound** — one :class:`bestshot.scale.serve.SlotCounter` actor, asked by every replica's job
  queue before it accepts a job (``JobQueue.gate``): ``--max-queue`` jobs in the whole deployment, the rest
  get the app's 429 (A1111 error body, ``Retry-After``). Each replica sends the counter a heartbeat, so the
  slots of a replica that dies are freed within ``GRACE_S`` (30 s). See ``bestshot.scale.serve`` for why
  not Serve's own backpressure.
* **the output store** — every replica writes to and lists the same ``--out-dir`` (paths are made absolute
  by the driver; on a multi-node cluster it must be a shared filesystem). The store is multi-process safe:
  atomic image files, an ``flock``-ed JSONL log, a SQLite index.

What stays per replica: the running job, ``/sdapi/v1/progress``, ``/v1/jobs`` and A1111's ``/options``
(a request lands on any replica), like on several A1111 instances behind a load balancer.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BestshotError
from ..scale.cluster import LOCAL, connect, require_ray
from ..scale.serve import RayGate, ReplicaPlan, lease_seconds, shortfall, start_slot_counter
from .app import ServerSettings, create_app
from .ray_front import Front, Relay

log = logging.getLogger(__name__)
APP_NAME = "bestshot"


class BestshotReplica(Relay):
    """One Serve replica: the app of ``settings``, its job queue gated by the shared slot counter; requests come
    relayed by the :class:`~bestshot.server.ray_front.Front`."""

    def __init__(self, settings: ServerSettings, counter: Any, beat_s: float | None = None) -> None:
        ray = require_ray()
        app = create_app(settings)
        holder = ray.get_runtime_context().get_actor_id() or ""
        # beat_s: how often this replica tells the counter it is alive (its slots follow its life)
        app.state.jobs.gate = RayGate(counter, holder=holder, beat_s=beat_s)
        self.start_app(app)


def _absolute(value: str | None) -> str | None:
    """A path the driver can see, made absolute so replicas (other working directories, other nodes on a
    shared filesystem) find the same place; hub ids and names (no such file here) are kept as they are."""
    if not value or value == "embedded":
        return value
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else value


def replica_settings(settings: ServerSettings, plan: ReplicaPlan) -> ServerSettings:
    """The settings each replica gets: absolute paths, and ``device="cpu"`` for replicas without a GPU."""
    changes: dict[str, Any] = {
        "out_dir": str(Path(settings.out_dir).expanduser().resolve()),
        "curate_dir": str(Path(settings.curate_dir).expanduser().resolve()),
        "log_jsonl": str(Path(settings.log_jsonl).expanduser().resolve()) if settings.log_jsonl else None,
        "interrogate_cache": (
            str(Path(settings.interrogate_cache).expanduser().resolve()) if settings.interrogate_cache else None
        ),
        "curate_config": _absolute(settings.curate_config),
        "model": _absolute(settings.model),
        "extra_models": tuple(_absolute(m) for m in settings.extra_models),
    }
    if isinstance(settings.scorer, str):
        changes["scorer"] = _absolute(settings.scorer)
    if plan.num_gpus == 0 and settings.device is None:
        changes["device"] = "cpu"
    return dataclasses.replace(settings, **changes)


def application(settings: ServerSettings, plan: ReplicaPlan, counter: Any, beat_s: float | None = None):
    """The Serve application (``Deployment.bind(...)``): the front (the ingress, no CPU) relaying to ``plan``'s
    replicas of the app of ``settings``."""
    require_ray()
    from ray import serve

    replicas = serve.deployment(name="BestshotReplica", **plan.deployment_options())(BestshotReplica)
    # the front holds every request in flight (a coroutine each): room for all the replicas may take, and more
    front = serve.deployment(
        name="BestshotFront",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=2 * plan.max_replicas * plan.deployment_options()["max_ongoing_requests"] + 100,
    )(serve.ingress()(Front))
    return front.bind(replicas.bind(replica_settings(settings, plan), counter, beat_s))


def deploy(settings: ServerSettings, plan: ReplicaPlan, *, host: str = "127.0.0.1", port: int = 7860) -> Any:
    """Start Serve's HTTP proxy on ``host:port``, the shared slot counter and the replicas; returns the counter
    (an actor handle: keep it, the counter lives as long as this process). Ray must be initialised."""
    require_ray()
    from ray import serve

    from ..scale import serve as slots

    grace = slots.GRACE_S  # read now: a test may shorten it
    counter = start_slot_counter(
        settings.max_queue, lease_seconds(settings.max_queue, settings.limits.job_timeout), grace_s=grace
    )
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(
            application(settings, plan, counter, beat_s=grace / slots.BEATS_PER_GRACE),
            name=APP_NAME,
            route_prefix="/",
            blocking=False,
        )
    except Exception as e:  # noqa: BLE001 - Serve wraps the replica's own error (e.g. a BestshotError) in its own
        _stop(counter)
        text = str(e).strip()
        line = next(
            (x for x in reversed(text.splitlines()) if "BestshotError" in x), text.splitlines()[-1] if text else ""
        )
        raise BestshotError(
            f"the Ray Serve deployment did not start: {line.split('BestshotError:')[-1].strip()[:300]} "
            "— see the replica log (`ray logs` / the Ray dashboard)"
        ) from None
    return counter


def _running_apps() -> set[str]:
    from ray import serve

    try:
        return set(serve.status().applications)
    except Exception:  # noqa: BLE001 - Serve not started on this cluster
        return set()


def _stop(counter: Any) -> None:
    ray = require_ray()
    from ray import serve

    try:
        serve.delete(APP_NAME)  # replicas stop gracefully: queued jobs 503, the running one at its next step
        if not serve.status().applications:  # Serve itself only when no other application uses it
            serve.shutdown()
    finally:
        try:
            ray.kill(counter)
        except Exception:  # noqa: BLE001 - already gone with the cluster
            pass


def serve_on_ray(
    settings: ServerSettings,
    *,
    address: str | None,
    host: str,
    port: int,
    replicas: int | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    echo: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> None:
    """``bestshot serve --ray``: deploy, wait for Ctrl-C / SIGTERM (or ``stop``), then shut Serve down
    cleanly: replicas stop taking jobs, queued jobs are answered 503, running ones stop at their next step."""
    ray = require_ray()
    check = create_app(settings)  # bad settings (auth, folders, curate config) fail here, not in every replica
    check.state.jobs.shutdown()
    check.state.jobs.close(1)
    started_here = not ray.is_initialized() and (address or LOCAL) == LOCAL
    local = (address or LOCAL) == LOCAL
    connect(address)
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        from ..scale.serve import plan_replicas

        plan = plan_replicas(
            gpus,
            replicas=replicas,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            max_queue=settings.max_queue,
        )
        short = shortfall(plan, gpus)
        if short and local:
            raise BestshotError(short)
        if short:
            echo(f"warning: {short} (waiting for the cluster's autoscaler to add GPUs)")
        stop = stop or threading.Event()
        signalled: list[bool] = []
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        if threading.current_thread() is threading.main_thread():
            for s in previous:  # the handler only sets a flag: Event.set() from a signal handler can deadlock
                signal.signal(s, lambda *_: signalled.append(True))  # on the lock the interrupted wait holds
        if not local and APP_NAME in _running_apps():
            echo(f"warning: the cluster already runs a Serve application named {APP_NAME!r}: it is replaced")
        try:
            counter = deploy(settings, plan, host=host, port=port)
            per = f"{plan.num_gpus:g} GPU" if plan.num_gpus else f"{plan.num_cpus:g} CPU"
            count = (
                f"{plan.min_replicas}-{plan.max_replicas} replicas (autoscaling)"
                if plan.autoscaling
                else f"{plan.max_replicas} replica(s)"
            )
            echo(
                f"bestshot serving {settings.model} on Ray Serve: {count}, {per} each, at most {settings.max_queue} "
                f"jobs queued in all — http://{host}:{port}/  (Ctrl-C stops)"
            )
            try:
                while not (signalled or stop.is_set()):
                    time.sleep(0.2)
                echo("stopping: replicas finish or stop their running job, queued jobs are answered 503")
            finally:
                _stop(counter)
        finally:
            if threading.current_thread() is threading.main_thread():
                for s, h in previous.items():
                    signal.signal(s, h)
    finally:
        if started_here:
            ray.shutdown()


__all__ = ["BestshotReplica", "Front", "application", "deploy", "replica_settings", "serve_on_ray"]
