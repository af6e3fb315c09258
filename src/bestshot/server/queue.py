"""One GPU job at a time: a bounded queue consumed by a single worker thread.

Why a thread and not the event loop: diffusion calls block for seconds to minutes and hold the GPU, so
they must never run on the asyncio loop, and two of them must never run at once (VRAM). Endpoints
``await job.wait()``, which shields the job from the client: a client that disconnects cancels its own
wait, never the job, so every accepted job is finished and stored. A full queue refuses at once
(:class:`QueueFull` → HTTP 429 with Retry-After), before any work is done, so nothing is half-done.

Several processes (``bestshot serve --ray``: one app per Ray Serve replica) share one bound through a
``gate`` (:class:`AdmissionGate`): a job is admitted only when the gate gives it a slot, and gives the slot
back when the job ends or is cancelled, so ``max_queue`` holds for all replicas together.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """A queued job was cancelled (DELETE /v1/jobs/{id}, or the server shutting down) before it ran."""

    def __init__(self, why: str = "cancelled"):
        super().__init__(
            "the job was cancelled before it started"
            if why != "shutdown"
            else "the server is shutting down; the job was not run — retry against a running server"
        )
        self.why = why


class ShuttingDown(Exception):
    """The server is stopping: no new job is accepted (HTTP 503)."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down — retry against a running server")


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the job queue is full — retry in about {retry_after}s")
        self.retry_after = retry_after


class AdmissionGate(Protocol):
    """A bound on jobs shared by several job queues (one per server process)."""

    def acquire(self) -> tuple[Any, int]:
        """``(token, waiting)``: a slot's token (None when every slot is taken) and the jobs holding one."""
        ...

    def release(self, token: Any) -> None:
        """Give a slot back (called once per token)."""
        ...


@dataclass
class Job:
    """A unit of GPU work and what the progress route shows about it."""

    id: str
    kind: str
    fn: Callable[[Job], Any]
    description: str = ""
    parts: int = 1  # e.g. one generate() call per returned image
    part: int = 0
    step: int = 0
    total: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    future: Future = field(default_factory=Future)
    timeout: float | None = None  # seconds of running time before the job is interrupted
    stopped: str | None = None  # why the job stopped early: "interrupt", "timeout", "shutdown" (or None)
    skipped: bool = False  # the current part is being skipped (A1111's /skip); cleared by next_part()
    preview: Any = None  # the latest latents (a CPU tensor) for progress.current_image
    preview_every: int = 0  # keep latents every this many steps (0: never)
    gate_token: Any = None  # the shared admission slot this job holds (JobQueue.gate), None without one

    def on_step(self, step: int, total: int, latents: Any = None) -> str | None:
        """The ``on_step`` callback handed to ``generate``: records progress, and returns why the pipeline
        must stop at this step (``"interrupt"``, ``"skip"``, ``"timeout"``, ``"shutdown"``), else None."""
        self.step, self.total = step, total
        if latents is not None and self.preview_every and (step % self.preview_every == 0 or step == total):
            try:
                self.preview = latents[:1].detach().float().cpu()
            except (AttributeError, TypeError, IndexError):
                self.preview = None
        if (
            self.stopped is None
            and self.timeout is not None
            and self.started is not None
            and time.time() - self.started > self.timeout
        ):
            self.stopped = "timeout"
            log.warning("job %s ran past its %.0fs timeout; stopping at step %d", self.id, self.timeout, step)
        return self.stopped or ("skip" if self.skipped else None)

    def stop(self, why: str = "interrupt") -> None:
        """Ask the job to stop at its next denoising step (what was finished is returned, marked)."""
        if self.finished is None and self.stopped is None:
            self.stopped = why

    @property
    def should_stop(self) -> bool:
        return self.stopped is not None

    def next_part(self) -> None:
        self.part = min(self.part + 1, self.parts)
        self.step = 0
        self.skipped = False

    @property
    def progress(self) -> float:
        if self.finished is not None:
            return 1.0
        if self.started is None:
            return 0.0
        inner = self.step / self.total if self.total else 0.0
        return min(1.0, (self.part + inner) / max(1, self.parts))

    def info(self) -> dict[str, Any]:
        state = "done" if self.finished else "running" if self.started else "queued"
        if self.future.cancelled():
            state = "cancelled"
        return {
            "id": self.id,
            "kind": self.kind,
            "description": self.description,
            "state": state,
            "stopped": self.stopped,
            "progress": round(self.progress, 4),
            "part": self.part,
            "parts": self.parts,
            "step": self.step,
            "total": self.total,
            "created": self.created,
        }

    async def wait(self) -> Any:
        """The job's result; cancelling this wait (client gone) leaves the job running. A job cancelled
        before it started raises :class:`JobCancelled`."""
        fut = asyncio.wrap_future(self.future)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if self.future.cancelled():
                raise JobCancelled(self.stopped or "cancelled") from None
            raise


class JobQueue:
    """``submit`` from any thread (or the event loop); one daemon worker runs jobs in order."""

    def __init__(self, max_queue: int = 8, job_timeout: float | None = None, gate: AdmissionGate | None = None):
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.max_queue = max_queue
        self.job_timeout = job_timeout
        self.gate = gate  # shared with other processes' queues (serve --ray); None: this queue's bound only
        self.shutting_down = False
        self._q: queue.Queue[Job] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: list[Job] = []
        self.current: Job | None = None
        self.last: Job | None = None
        self._ids = itertools.count(1)
        self._durations: list[float] = []
        self.completed = 0
        self._recent: collections.deque[Job] = collections.deque(maxlen=100)
        self._stopping = False
        self._worker: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        """Start the worker (again, after :meth:`close`); a no-op while it runs."""
        with self._lock:
            self._stopping = False
            self.shutting_down = False
            self._ensure_worker()

    def _ensure_worker(self) -> None:  # under self._lock
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name="bestshot-gpu-worker", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------------ submitting
    def submit(self, kind: str, fn: Callable[[Job], Any], description: str = "", parts: int = 1) -> Job:
        """Queue ``fn(job)``; raises :class:`QueueFull` when ``max_queue`` jobs wait or run already (here, or
        with a ``gate``, in all the queues that share it)."""
        with self._lock:
            if self.shutting_down:
                raise ShuttingDown()
            waiting = len(self._pending) + (self.current is not None)
            if waiting >= self.max_queue:
                raise QueueFull(self._retry_after(waiting))
        token = None
        if self.gate is not None:
            token, shared = self.gate.acquire()
            if token is None:
                raise QueueFull(self._retry_after(max(1, shared)))
        with self._lock:
            waiting = len(self._pending) + (self.current is not None)
            if self.shutting_down or waiting >= self.max_queue:  # changed while the gate answered
                self._release(token)
                if self.shutting_down:
                    raise ShuttingDown()
                raise QueueFull(self._retry_after(waiting))
            job = Job(
                id=f"job-{next(self._ids)}",
                kind=kind,
                fn=fn,
                description=description,
                parts=max(1, parts),
                timeout=self.job_timeout,
                gate_token=token,
            )
            self._pending.append(job)
            self._ensure_worker()  # a job accepted after close() still runs
        self._q.put(job)
        return job

    def _release(self, token: Any) -> None:
        """Give a shared admission slot back; a gate that fails is logged, never raised into a request."""
        if token is None or self.gate is None:
            return
        try:
            self.gate.release(token)
        except Exception:  # noqa: BLE001 - the gate reclaims expired slots itself
            log.warning("could not give admission slot %r back", token, exc_info=True)

    def _done_with(self, job: Job) -> None:
        with self._lock:  # the worker and cancel() may both get here: the slot goes back once
            token, job.gate_token = job.gate_token, None
        self._release(token)

    def _retry_after(self, waiting: int) -> int:
        mean = sum(self._durations) / len(self._durations) if self._durations else 2.0
        return max(1, int(round(mean * waiting)))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "current": self.current.info() if self.current else None,
                "queued": [j.info() for j in self._pending],
                "max_queue": self.max_queue,
                "completed": self.completed,
                "last": self.last.info() if self.last else None,
            }

    def find(self, job_id: str) -> Job | None:
        """A queued, running or recently finished job by id."""
        with self._lock:
            for job in (*self._pending, *([self.current] if self.current else []), *self._recent):
                if job.id == job_id:
                    return job
        return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending) + (self.current is not None)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job (its waiter gets :class:`JobCancelled`) or stop a running one at its next
        step; None when no such job is known."""
        job = self.find(job_id)
        if job is None:
            return None
        with self._lock:
            queued = job in self._pending
        if queued and job.future.cancel():
            job.stopped = "cancelled"
            with self._lock:
                if job in self._pending:
                    self._pending.remove(job)
                self._recent.append(job)  # GET /v1/jobs/{id} still answers for it
            self._done_with(job)
            return job
        job.stop("interrupt")
        return job

    def interrupt(self, skip: bool = False) -> Job | None:
        """A1111's /interrupt (stop the running job) and /skip (stop its current image, go on)."""
        job = self.current
        if job is not None:
            if skip:
                job.skipped = True
            else:
                job.stop("interrupt")
        return job

    def shutdown(self) -> None:
        """Refuse new jobs, cancel queued ones and stop the running one at its next step."""
        with self._lock:
            self.shutting_down = True
            pending = list(self._pending)
            cur = self.current
        for job in pending:
            if job.future.cancel():
                job.stopped = "shutdown"
                with self._lock:
                    if job in self._pending:
                        self._pending.remove(job)
                    self._recent.append(job)
                self._done_with(job)
        if cur is not None:
            cur.stop("shutdown")

    def close(self, timeout: float | None = None) -> None:
        """Let accepted jobs finish, then stop the worker (a later submit or start() restarts it)."""
        with self._lock:
            self._stopping = True
            worker = self._worker
        if worker is not None:
            worker.join(timeout)
        with self._lock:
            self.shutting_down = False  # a later submit() restarts the worker (tests reuse an app)

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        while True:
            try:
                job = self._q.get(timeout=0.1)
            except queue.Empty:
                with self._lock:
                    if self._stopping and not self._pending:
                        self._worker = None
                        return
                continue
            with self._lock:
                if job in self._pending:
                    self._pending.remove(job)
                cancelled = job.future.cancelled()
                if not cancelled:
                    self.current = job
            if cancelled:  # cancelled while queued: never started (its slot went back when it was cancelled)
                self._done_with(job)
                continue
            job.started = time.time()
            if job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(job.fn(job))
                except BaseException as e:  # noqa: BLE001 - handed to the waiting endpoint
                    if not isinstance(e, Exception):
                        log.exception("job %s aborted", job.id)
                    job.future.set_exception(e)
            job.finished = time.time()
            self._done_with(job)
            with self._lock:
                self.current = None
                self.last = job
                self._recent.append(job)
                self.completed += 1
                self._durations = (self._durations + [job.finished - job.started])[-20:]
