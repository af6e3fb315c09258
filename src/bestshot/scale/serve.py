"""Ray Serve building blocks for ``bestshot serve --ray``: replica options and one queue bound for all replicas.

The HTTP app itself (``bestshot.server``) is wrapped into a Serve deployment by ``bestshot.server.ray_serve``;
this module holds what needs no server code, so that it stays below the server in the import layers.

**Why a shared slot counter.** Each replica runs the ordinary app with its own one-job-at-a-time queue. Ray
Serve's own backpressure (``max_ongoing_requests`` per replica, ``max_queued_requests`` at the proxy) counts
*HTTP requests* of any kind (a progress poll as much as a txt2img), per replica or per proxy, and answers
with Serve's own body (503 by default, or a plain-text 429), not the A1111 error body bestshot clients get
from the single-process server. So admission is decided by the app, against one :class:`SlotCounter` actor
that every replica's job queue asks before it accepts a job (``JobQueue.gate``): ``--max-queue`` is the
number of jobs waiting or running in the whole deployment, whatever the replica count (autoscaling
included), and the refused request gets the app's usual 429 (A1111 body, ``Retry-After``). The actor call
costs about a millisecond per job, nothing next to a diffusion call. Serve's limits stay as a backstop set
well above it (``max_ongoing_requests = max_queue + headroom`` per replica, so jobs never wait in the proxy
and the router spreads them by ongoing requests), with ``backpressure_config`` answering 429 too.

A slot is given back when its job ends or is cancelled. A replica that dies holding slots cannot give them
back, so slots follow the replica's life: every replica's gate tells the counter it is alive every
``grace_s / 6`` seconds (:data:`GRACE_S`, 30 s by default), and the slots of a holder not heard from for
``grace_s`` are freed (``orphaned`` in the stats). A slot also expires after ``lease_s`` (``max_queue`` jobs of at
most ``--job-timeout`` each, plus a minute: a replica alive but stuck), and while the counter cannot be reached
(its driver is gone) each replica admits on its own ``max_queue`` instead of refusing everything.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import BestshotError
from .cluster import require_ray

log = logging.getLogger(__name__)

HEADROOM = 32  # requests per replica beyond the job bound that Serve lets through (polls, gallery, files)
GRACE_S = 30.0  # a replica not heard from for this long is taken as dead: its slots are freed
BEATS_PER_GRACE = 6  # heartbeats a replica sends per grace period


class SlotCounter:
    """At most ``capacity`` slots out at once; each expires ``lease_s`` seconds after it was taken (None: never),
    and all of a holder's slots are freed when the holder has not been heard from (:meth:`beat`, :meth:`acquire`)
    for ``grace_s`` seconds (None: never).

    Plain Python (tested without Ray); :func:`start_slot_counter` runs it as a Ray actor. Calls on one Ray
    actor run one at a time, so no lock is needed there; the lock keeps direct use thread-safe too.
    """

    def __init__(
        self, capacity: int, lease_s: float | None = None, grace_s: float | None = None, clock: Any = time.monotonic
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.lease_s = lease_s
        self.grace_s = grace_s
        self.clock = clock
        self._held: dict[int, tuple[str, float]] = {}  # token -> (holder, expiry)
        self._seen: dict[str, float] = {}  # holder -> when it was last heard from
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.expired = 0  # slots freed by their lease
        self.orphaned = 0  # slots freed because their holder went silent (a replica that died)
        self.granted = 0  # slots handed out since the start
        self.peak = 0  # most slots out at once

    def _expire(self, now: float) -> None:
        silent = {h for h, t in self._seen.items() if self.grace_s is not None and now - t > self.grace_s}
        lost = [t for t, (h, _) in self._held.items() if h in silent]
        for t in lost:
            del self._held[t]
        for h in silent:
            del self._seen[h]
        dead = [t for t, (_, until) in self._held.items() if until <= now]
        for t in dead:
            del self._held[t]
        self.orphaned += len(lost)
        self.expired += len(dead)
        if lost:
            log.warning(
                "%d admission slot(s) freed: their replica was not heard from for %gs (it died?)",
                len(lost),
                self.grace_s,
            )
        if dead:
            log.warning("%d admission slot(s) expired without being given back (a stuck replica?)", len(dead))

    def beat(self, holder: str) -> int:
        """``holder`` is alive; returns how many slots it holds."""
        with self._lock:
            now = self.clock()
            self._seen[holder] = now
            self._expire(now)
            return sum(1 for h, _ in self._held.values() if h == holder)

    def acquire(self, holder: str = "") -> tuple[int | None, int]:
        """``(token, held)``: a new slot's token, or None when all ``capacity`` are out; ``held`` counts them."""
        with self._lock:
            now = self.clock()
            self._seen[holder] = now
            self._expire(now)
            if len(self._held) >= self.capacity:
                return None, len(self._held)
            token = next(self._ids)
            self._held[token] = (holder, now + self.lease_s if self.lease_s else math.inf)
            self.granted += 1
            self.peak = max(self.peak, len(self._held))
            return token, len(self._held)

    def release(self, token: int) -> bool:
        with self._lock:
            return self._held.pop(token, None) is not None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._expire(self.clock())
            holders: dict[str, int] = {}
            for holder, _ in self._held.values():
                holders[holder] = holders.get(holder, 0) + 1
            return {
                "capacity": self.capacity,
                "held": len(self._held),
                "holders": holders,
                "expired": self.expired,
                "orphaned": self.orphaned,
                "granted": self.granted,
                "peak": self.peak,
            }


def lease_seconds(max_queue: int, job_timeout: float | None) -> float | None:
    """How long a slot may be held: ``max_queue`` jobs of ``job_timeout`` seconds one after another, plus a
    minute; None (never expires) when jobs have no timeout."""
    return max_queue * job_timeout + 60.0 if job_timeout else None


SLOTS_ACTOR = ("bestshot-serve-slots", "bestshot")  # (name, namespace) of the counter, for `ray.get_actor`


def start_slot_counter(capacity: int, lease_s: float | None = None, grace_s: float | None = None) -> Any:
    """A :class:`SlotCounter` Ray actor (0 CPUs: it must never wait for a CPU the replicas hold), named
    :data:`SLOTS_ACTOR`. It lives as long as the process that started it (the ``bestshot serve --ray`` driver)."""
    ray = require_ray()
    name, namespace = SLOTS_ACTOR
    try:
        ray.kill(ray.get_actor(name, namespace=namespace))  # one left by a driver that did not stop cleanly
    except ValueError:
        pass
    actor = ray.remote(num_cpus=0, max_concurrency=1)(SlotCounter)
    return actor.options(name=name, namespace=namespace).remote(capacity, lease_s, grace_s)


class RayGate:
    """``JobQueue.gate`` backed by a :class:`SlotCounter` actor (see the module docstring).

    ``beat_s``: how often a daemon thread tells the counter this replica is alive (None: no heartbeat; the
    counter must then have no ``grace_s``). When the actor cannot be reached the gate admits (the replica's own
    ``max_queue`` still bounds it) and logs once, rather than refusing every request while the counter is away.
    """

    def __init__(self, counter: Any, holder: str = "", timeout_s: float = 10.0, beat_s: float | None = None) -> None:
        self.counter = counter
        self.holder = holder
        self.timeout_s = timeout_s
        self._warned = False
        self._stop = threading.Event()
        if beat_s:
            threading.Thread(
                target=self._heartbeat, args=(beat_s,), name="bestshot-slot-heartbeat", daemon=True
            ).start()

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self._call("beat", self.holder)
            except Exception:  # noqa: BLE001 - the counter is away (driver gone): acquire() says so
                pass

    def stop(self) -> None:
        self._stop.set()

    def _call(self, method: str, *args: Any) -> Any:
        ray = require_ray()
        return ray.get(getattr(self.counter, method).remote(*args), timeout=self.timeout_s)

    def acquire(self) -> tuple[Any, int]:
        try:
            token, held = self._call("acquire", self.holder)
        except Exception as e:  # noqa: BLE001 - actor died, timed out, cluster shutting down
            if not self._warned:
                log.warning(
                    "the shared admission counter is unreachable (%s): admitting on this replica's own --max-queue",
                    type(e).__name__,
                )
                self._warned = True
            return "local", 0
        self._warned = False
        return token, held

    def release(self, token: Any) -> None:
        if token == "local":
            return
        self._call("release", token)


@dataclass(frozen=True)
class ReplicaPlan:
    """How many replicas, with which resources, and Serve's limits around them (``bestshot serve --ray``)."""

    min_replicas: int = 1
    max_replicas: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    max_queue: int = 8
    target_ongoing_requests: float = 2.0  # autoscaling: ongoing requests per replica it aims for

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            raise BestshotError(
                f"replicas: need 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1 "
                f"(got {self.min_replicas} and {self.max_replicas})"
            )
        if self.num_gpus < 0 or self.num_cpus < 0 or (self.num_gpus == 0 and self.num_cpus == 0):
            raise BestshotError(
                f"replica resources: --replica-gpus and --replica-cpus must be >= 0 and not both 0 "
                f"(got {self.num_gpus:g} GPU, {self.num_cpus:g} CPU)"
            )
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise BestshotError(f"--replica-gpus {self.num_gpus:g}: above 1 it must be a whole number of GPUs")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas != self.max_replicas

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``serve.deployment(...)`` / ``Deployment.options(...)``."""
        from ray.serve.config import BackpressureConfig

        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            # the app bounds jobs (SlotCounter); Serve only stops floods of light requests, and answers 429 too
            "max_ongoing_requests": self.max_queue + HEADROOM,
            "max_queued_requests": 4 * (self.max_queue + HEADROOM),
            "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=5),
            "max_constructor_retry_count": 3,  # a replica that cannot start fails the deploy soon, not after 20 tries
            "graceful_shutdown_timeout_s": 15,
            "graceful_shutdown_wait_loop_s": 1,
        }
        if self.autoscaling:
            opts["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": max(1, self.min_replicas),
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            opts["num_replicas"] = self.max_replicas
        return opts


def plan_replicas(
    cluster_gpus: float,
    *,
    replicas: int | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    max_queue: int = 8,
) -> ReplicaPlan:
    """The replica plan for a cluster with ``cluster_gpus`` GPUs. By default a fixed one replica per GPU
    (``num_gpus=1``), or one CPU replica on a cluster without GPUs; ``replicas`` fixes another count;
    ``min_replicas`` / ``max_replicas`` autoscale between them (a missing max: one per GPU; a missing min: 1)."""
    gpus = (1.0 if cluster_gpus >= 1 else 0.0) if num_gpus is None else float(num_gpus)
    cpus = 1.0 if num_cpus is None else float(num_cpus)
    per_gpu = int(cluster_gpus // gpus) if gpus > 0 else 1
    if replicas is not None:
        if min_replicas is not None or max_replicas is not None:
            raise BestshotError(
                "give --replicas N (a fixed count) or --min-replicas/--max-replicas (autoscaling), not both"
            )
        lo = hi = replicas
    elif min_replicas is None and max_replicas is None:
        lo = hi = max(1, per_gpu)  # one replica per GPU (or one on CPU)
    else:
        lo = 1 if min_replicas is None else min_replicas
        hi = max_replicas if max_replicas is not None else max(1, per_gpu, lo)
    return ReplicaPlan(min_replicas=lo, max_replicas=hi, num_gpus=gpus, num_cpus=cpus, max_queue=max_queue)


def shortfall(plan: ReplicaPlan, cluster_gpus: float) -> str | None:
    """Why the cluster (as it is now) cannot start the plan's first replicas, or None. A cluster with an
    autoscaler may still add GPU nodes, so callers warn on a remote cluster and refuse on a local one."""
    need = plan.num_gpus * max(plan.min_replicas, 1)
    if plan.num_gpus > 0 and cluster_gpus < need:
        return (
            f"the Ray cluster has {cluster_gpus:g} GPU(s), fewer than {max(plan.min_replicas, 1)} replica(s) x "
            f"{plan.num_gpus:g} GPU — lower the replica count, share GPUs (--replica-gpus 0.5) or run on CPU "
            "(--replica-gpus 0)"
        )
    return None


__all__ = ["SlotCounter", "RayGate", "ReplicaPlan", "plan_replicas", "shortfall", "start_slot_counter", "lease_seconds"]
