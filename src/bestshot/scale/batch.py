"""A batch job's rows across Ray workers (Ray Data), one progress bar, a per-worker summary.

The job owns what a row *is* and how it is made; this module only distributes it:

* the driver turns the rows (JSON-able dicts, each with an integer ``key``) into a Ray Dataset;
* ``map_batches`` runs them through a pool of ``workers`` actors (a callable class, so each worker builds
  its row maker once: one pipeline load per worker), each actor reserving ``cpus_per_worker`` CPUs and
  ``gpus_per_worker`` GPUs (fractional: 0.5 puts two workers on one GPU);
* a row maker returns a :class:`RowOutput`: the row's result (JSON) and the files to write. The worker
  writes the files atomically, in order (the job puts its "done" marker last), to the job's
  :class:`~bestshot.scale.output.Output` (a shared folder or a URI), then hands the result back;
* the driver streams the results as they finish (progress bar: rows done / total, images per second,
  ETA), calls the job's ``on_result`` for each (e.g. to append a log line at once, so a killed driver loses
  only the rows in flight), and returns them sorted by key, so the results table does not depend on which
  worker finished first.

Faults are Ray's: a worker process that dies is restarted and its unfinished rows are retried (Ray Data's
actor pool defaults, ``max_restarts=-1`` and ``max_task_retries=-1``). A retried row may find its files
already written by the attempt that died after writing; row makers check that first (``RowOutput.skipped``),
so every row's files are written once, whole.

The row maker comes from ``factory(output)``, a picklable callable (a class or a ``functools.partial`` of a
module-level function) that runs in the worker process: the job's own single-process code, so seeds and
results are the same with or without Ray.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BestshotError
from .output import Output


@dataclass
class RayJobCfg:
    """How a job runs on Ray (the ``--ray`` flags)."""

    address: str = "local"  # local: a Ray on this machine; auto or HOST:PORT: a cluster
    workers: int | None = None  # actors in the pool (one pipeline each); None: one per GPU (or per
    #                                  cpus_per_worker CPUs on a cluster without GPUs), at most one per row
    gpus_per_worker: float | None = None  # 1: one GPU each; 0.5: two workers share a GPU; 0: CPU; None: 1 if
    #                                     the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0
    batch_size: int = 1  # rows per map_batches call (a row maker still makes one row at a time)
    connect_timeout_s: float | None = None  # an unreachable address fails within this (None: env
    #                                         BESTSHOT_RAY_CONNECT_TIMEOUT_S, else 20 s)

    def validate(self) -> RayJobCfg:
        if self.workers is not None and self.workers < 1:
            raise BestshotError(f"--ray-workers must be >= 1 (got {self.workers})")
        if self.batch_size < 1:
            raise BestshotError(f"--ray-batch-size must be >= 1 (got {self.batch_size})")
        g = self.gpus_per_worker
        if g is not None and not (0 <= g and math.isfinite(g)):
            raise BestshotError(f"--gpus-per-worker must be >= 0, e.g. 1 or 0.5 (got {g})")
        if g is not None and g > 1 and g != int(g):
            raise BestshotError(f"--gpus-per-worker above 1 must be a whole number (got {self.gpus_per_worker})")
        if not (0 < self.cpus_per_worker and math.isfinite(self.cpus_per_worker)):
            raise BestshotError(f"--cpus-per-worker must be > 0 (got {self.cpus_per_worker})")
        return self

    def resolved(self, resources: dict[str, float], rows: int) -> RayJobCfg:
        """Fill the automatic fields from the cluster's resources (``ray.cluster_resources()``)."""
        from dataclasses import replace

        gpus_total, cpus_total = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        g = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus_total else 0.0)
        if g > gpus_total:
            raise BestshotError(
                f"--gpus-per-worker {g:g} but the Ray cluster has {gpus_total:g} GPU(s) — lower it, "
                "or give --gpus-per-worker 0 to run on CPUs"
            )
        if self.cpus_per_worker > cpus_total:
            raise BestshotError(
                f"--cpus-per-worker {self.cpus_per_worker:g} but the Ray cluster has {cpus_total:g} CPU(s) — lower it"
            )
        fits = max(1, int(gpus_total // g) if g else int(cpus_total // self.cpus_per_worker))
        w = fits if self.workers is None else min(self.workers, fits)
        return replace(self, workers=max(1, min(w, rows)), gpus_per_worker=g)

    def fit_note(self, resources: dict[str, float]) -> str | None:
        """Why fewer workers than ``--ray-workers`` run (the cluster has room for fewer now), or None."""
        if self.workers is None:
            return None
        gpus_total, cpus_total = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        g = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus_total else 0.0)
        fits = max(1, int(gpus_total // g) if g else int(cpus_total // self.cpus_per_worker))
        if self.workers <= fits:
            return None
        need = f"{g:g} GPU" if g else f"{self.cpus_per_worker:g} CPU(s)"
        have = f"{gpus_total:g} GPU(s)" if g else f"{cpus_total:g} CPU(s)"
        return (
            f"--ray-workers {self.workers} with {need} each needs more than the Ray cluster's {have}: running "
            f"{fits} worker(s) — lower --cpus-per-worker / --gpus-per-worker, or add nodes"
        )


@dataclass
class RowOutput:
    """What a row maker returns for one row."""

    result: dict[str, Any]  # JSON-able; the job's results table row
    files: list[tuple[str, bytes]] = field(default_factory=list)  # written atomically, in this order
    skipped: bool = False  # found done (verified), nothing made


@dataclass
class WorkerStats:
    worker: str
    node: str
    pid: int
    rows: int = 0
    skipped: int = 0
    busy_s: float = 0.0

    @property
    def rows_per_s(self) -> float | None:
        return self.rows / self.busy_s if self.busy_s > 0 else None


@dataclass
class BatchReport:
    results: list[dict[str, Any]]  # by key
    rows: int  # rows handed to the workers
    made: int  # rows made now (not found done by a worker)
    seconds: float  # wall time of the distributed part (workers starting included)
    workers: list[WorkerStats]

    @property
    def rows_per_s(self) -> float | None:
        return self.made / self.seconds if self.seconds > 0 and self.made else None


def settings_digest(settings: Any) -> str:
    """A short digest of a job's settings (a dataclass or JSON-able value): put in every row, so a done-marker
    written under other settings never matches (see :func:`read_marker`)."""
    import dataclasses
    import hashlib

    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        settings = dataclasses.asdict(settings)
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def prune_markers(
    folder: str | os.PathLike, rows: list[dict[str, Any]], still_there: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The stored results of ``rows`` whose done-marker in ``folder`` matches (row and settings) and whose
    outputs are ``still_there``; the marker of any other row is removed (it is made again)."""
    found = []
    for row in rows:
        m = read_marker(folder, row)
        if m is not None and still_there(m.result):
            found.append(m.result)
        else:
            Path(folder, f"{row['key']}.json").unlink(missing_ok=True)
    return found


def read_marker(folder: str | os.PathLike | None, row: dict[str, Any]) -> RowOutput | None:
    """The stored result of ``row`` when ``folder`` holds its done-marker (written after the row's files, for
    exactly this row), else None."""
    if not folder:
        return None
    try:
        with open(os.path.join(folder, f"{row['key']}.json"), encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("row") != row:
        return None
    return RowOutput(rec.get("result") or {}, skipped=True)


class _RayWorker:
    """The callable class of ``map_batches``: builds the row maker once, then makes rows."""

    def __init__(
        self,
        factory: Callable[[Output | None], Callable[[dict[str, Any]], RowOutput]],
        output: Output | None,
        journal: str | None = None,
        cwd: str | None = None,
        markers: str | None = None,
    ):
        if cwd and os.path.isdir(cwd):  # relative paths of the job mean what they mean on the driver (a shared
            os.chdir(cwd)  # file system mounted at the same place); this process is the worker's own
        self.output = output
        self.journal = journal
        self.markers = markers
        self.make = factory(output)
        try:
            import ray

            ctx = ray.get_runtime_context()
            self.worker = (ctx.get_actor_id() or "")[:8] or f"pid{os.getpid()}"  # the tail is the job id
            node_id = ctx.get_node_id() or ""
        except Exception:  # noqa: BLE001 - outside Ray (a unit test calling the class)
            self.worker, node_id = f"pid{os.getpid()}", ""
        self.node = f"{socket.gethostname()}:{node_id[:8]}" if node_id else socket.gethostname()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        out = []
        for payload in batch["row"]:
            row = json.loads(payload)
            t = time.perf_counter()
            made = read_marker(self.markers, row)
            if made is None:
                made = self.make(row)
                if self.output is not None:
                    for name, data in made.files:
                        self.output.write(name, data)
                if self.markers and not made.skipped:
                    from ..store import atomic_write_json

                    atomic_write_json(
                        os.path.join(self.markers, f"{row['key']}.json"), {"row": row, "result": made.result}
                    )
            rec = {
                "key": row["key"],
                "skipped": made.skipped,
                "worker": self.worker,
                "node": self.node,
                "pid": os.getpid(),
                "seconds": time.perf_counter() - t,
            }
            if self.journal and not made.skipped:
                from ..store import append_jsonl

                append_jsonl(os.path.join(self.journal, f"{self.worker}.jsonl"), {**rec, "finished": time.time()})
            out.append(json.dumps({**rec, "result": made.result}))
        return {"out": np.array(out, dtype=object)}


def _batches(ds: Any, title: str):
    """The dataset's output batches; a worker's error (its constructor's too: Ray reports an ``ActorDiedError``
    with the whole traceback) ends the job with one line."""
    from .remote_errors import remote_error

    quiet = logging.getLogger("ray.data")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # Ray Data logs a failed job's whole traceback at ERROR: ours is one line
    try:
        it = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0))
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except BestshotError:
                raise
            except Exception as e:  # noqa: BLE001 - a worker's error, wrapped by Ray (Data)
                raise remote_error(e, title) from None
            yield batch
    finally:
        quiet.setLevel(level)


def _progress(console: Any, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    )


def run_rows(
    rows: list[dict[str, Any]],
    factory: Callable[[Output | None], Callable[[dict[str, Any]], RowOutput]],
    cfg: RayJobCfg,
    *,
    output: Output | None = None,
    title: str = "rows",
    on_result: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    console: Any = None,
    journal: str | os.PathLike | None = None,
    markers: str | os.PathLike | None = None,
) -> BatchReport:
    """Make ``rows`` (each a JSON-able dict with an int ``key``) on Ray; see the module docstring.

    ``journal``: a folder (shared by the workers) where each worker appends one line per row it made
    (``{worker}.jsonl``: key, worker, node, pid, seconds, finished): which worker made what, kept even when
    the driver dies.

    ``markers``: a folder (shared) where a worker writes ``{key}.json`` (the row and its result) once a row's
    outputs are complete; a row whose marker is there is not made again but reported with the stored result
    (``skipped``). For jobs whose outputs cannot tell by themselves that a row is done (a retried row whose
    first attempt finished; a rerun after the driver died, see :func:`read_marker`). A marker matches only
    the very same row: put the job's :func:`settings_digest` in each row, so a rerun under other settings
    makes its rows again."""
    from .cluster import connect

    cfg.validate()
    keys = [r.get("key") for r in rows]
    if any(not isinstance(k, int) for k in keys) or len(set(keys)) != len(keys):
        raise ValueError("run_rows: every row needs a distinct integer 'key'")
    if not rows:
        return BatchReport([], 0, 0, 0.0, [])
    ray = connect(cfg.address, timeout_s=cfg.connect_timeout_s)
    import ray.data  # noqa: F811 -- the submodule, loaded once a cluster is joined

    resources = ray.cluster_resources()
    note = cfg.fit_note(resources)
    cfg = cfg.resolved(resources, len(rows))
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-run INFO lines and "bars disabled" notice
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is the one bar of the job
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False

    ordered = sorted(rows, key=lambda r: r["key"])
    blocks = max(1, math.ceil(len(ordered) / cfg.batch_size))
    ds = ray.data.from_items([{"row": json.dumps(r)} for r in ordered], override_num_blocks=blocks)
    remote: dict[str, Any] = {}
    if cfg.gpus_per_worker:
        remote["num_gpus"] = cfg.gpus_per_worker
    ds = ds.map_batches(
        _RayWorker,
        fn_constructor_kwargs={
            "factory": factory,
            "output": output,
            "journal": str(journal) if journal else None,
            "cwd": os.getcwd(),
            "markers": str(markers) if markers else None,
        },
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.workers),
        num_cpus=cfg.cpus_per_worker,
        batch_format="numpy",
        **remote,
    )

    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    if note:
        console.print(f"note: {note}", markup=False, highlight=False)
    results: dict[int, dict[str, Any]] = {}
    stats: dict[str, WorkerStats] = {}
    made = 0
    t0 = time.perf_counter()
    with _progress(console, progress) as bar:
        task = bar.add_task(f"{title} on {cfg.workers} Ray worker(s)", total=len(ordered), rate="")
        for batch in _batches(ds, title):
            for payload in batch["out"]:
                rec = json.loads(payload)
                key = int(rec["key"])
                if key in results:  # a retried row reported twice: keep the first
                    continue
                results[key] = rec["result"]
                w = stats.setdefault(rec["worker"], WorkerStats(rec["worker"], rec["node"], int(rec["pid"])))
                if rec["skipped"]:
                    w.skipped += 1
                else:
                    w.rows += 1
                    w.busy_s += float(rec["seconds"])
                    made += 1
                if on_result is not None:
                    on_result(rec["result"])
                elapsed = time.perf_counter() - t0
                bar.update(task, advance=1, rate=f"{made / elapsed:.2f} images/s" if made and elapsed > 0 else "")
    missing = sorted(set(keys) - set(results))
    if missing:  # Ray Data raises when a row fails for good; this would be a bug, so say it plainly
        raise BestshotError(
            f"{len(missing)} row(s) came back from no Ray worker (first: {missing[:5]}) — "
            "rerun the same command: finished rows are skipped"
        )
    return BatchReport(
        [results[k] for k in sorted(results)],
        len(ordered),
        made,
        round(time.perf_counter() - t0, 3),
        sorted(stats.values(), key=lambda s: (s.node, s.worker)),
    )


def summary_table(report: BatchReport, title: str = "Ray workers"):
    """A rich table: one line per worker (id, node, rows, rows/s) and the total."""
    from rich.table import Table

    t = Table(title=title)
    for col, just in (
        ("worker", "left"),
        ("node", "left"),
        ("rows", "right"),
        ("skipped", "right"),
        ("busy s", "right"),
        ("rows/s", "right"),
    ):
        t.add_column(col, justify=just)
    for w in report.workers:
        rate = w.rows_per_s
        t.add_row(
            w.worker, w.node, str(w.rows), str(w.skipped), f"{w.busy_s:.1f}", "—" if rate is None else f"{rate:.2f}"
        )
    total = report.rows_per_s
    t.add_row(
        "all",
        "",
        str(report.made),
        str(report.rows - report.made),
        f"{report.seconds:.1f} (wall)",
        "—" if total is None else f"{total:.2f}",
    )
    return t


def report_dict(report: BatchReport) -> dict[str, Any]:
    """The report as JSON (for ``--json`` outputs and the bench)."""
    return {
        "rows": report.rows,
        "made": report.made,
        "seconds": report.seconds,
        "rows_per_s": report.rows_per_s,
        "workers": [
            {
                "worker": w.worker,
                "node": w.node,
                "pid": w.pid,
                "rows": w.rows,
                "skipped": w.skipped,
                "busy_s": round(w.busy_s, 3),
                "rows_per_s": w.rows_per_s,
            }
            for w in report.workers
        ],
    }


__all__ = [
    "read_marker",
    "prune_markers",
    "settings_digest",
    "RayJobCfg",
    "RowOutput",
    "BatchReport",
    "WorkerStats",
    "run_rows",
    "summary_table",
    "report_dict",
]
