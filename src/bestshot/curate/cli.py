"""``bestshot stage1 | upscale | run``: the curation workflow's three modes.

Continuous mode (no ``--once`` / ``--count``) runs until Ctrl-C: the first Ctrl-C finishes the
current image and stops cleanly, a second one aborts at once (files stay whole either way: every
write is atomic).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from ..errors import BestshotError
from ..scale.cli_options import CPUS_PER_WORKER, GPUS_PER_WORKER, RAY, RAY_BATCH, RAY_WORKERS
from ..scale.flags import RayFlagCommand

app = typer.Typer(help="Curation workflow: stage1 → curate → upscale.", no_args_is_help=True)

CONFIG = typer.Option(Path("config.yaml"), "--config", "-c", help="Workflow config (written with defaults if missing).")


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


class _Stop:
    """SIGINT → stop after the current image; a second SIGINT → KeyboardInterrupt (abort)."""

    def __init__(self) -> None:
        self.flag = False

    def __call__(self) -> bool:
        return self.flag

    def handler(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        _say("stopping after the current image (Ctrl-C again to abort now)")


@contextmanager
def _sigint(stop: _Stop) -> Iterator[None]:
    try:
        old = signal.signal(signal.SIGINT, stop.handler)
    except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _workflow(config: Path, init: bool):
    from .config import ensure_config, load_config
    from .workflow import Workflow

    if init:
        cfg, written = ensure_config(config)
        if written:
            _say(f"no {config} found: wrote the default config there — edit it (model, sizes, stages) and re-run")
    else:
        cfg = load_config(config)
    stop = _Stop()
    wf = Workflow(cfg, say=_say, stop_requested=stop)
    written = wf.prompt_files.ensure()
    for p in written:
        _say(f"wrote a default {p.name} at {p} — edit it")
    return wf, stop


def _count(once: bool, count: int | None) -> int | None:
    if count is not None and count < 1:
        raise BestshotError(f"--count must be >= 1 (got {count})")
    return 1 if once else count


def _main(mode: str, config: Path, once: bool, count: int | None, init: bool, job=None) -> None:
    try:
        count = _count(once, count)
        if job is not None and count is None:
            raise BestshotError("--ray makes a fixed number of images: add --count N (or --once)")
        wf, stop = _workflow(config, init)
        if job is not None:
            from rich.console import Console

            from ..scale.batch import summary_table

            console = Console(stderr=True)
            done, report = wf.stage1_on_ray(count, job, console=console)
            console.print(summary_table(report))
        else:
            with _sigint(stop):
                done = wf.run(mode, count)
    except BestshotError as e:
        _say(f"error: {e}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        _say("aborted")
        raise typer.Exit(130) from None
    _say(f"{mode}: {len(done)} image(s) done → {wf.layout.root}")


@app.command("stage1", cls=RayFlagCommand)
def stage1(
    once: bool = typer.Option(False, "--once", help="Make one image and stop."),
    count: int | None = typer.Option(None, "--count", "-n", help="Make N images and stop."),
    config: Path = CONFIG,
    ray: str | None = RAY,
    ray_workers: int | None = RAY_WORKERS,
    gpus_per_worker: float | None = GPUS_PER_WORKER,
    cpus_per_worker: float = CPUS_PER_WORKER,
    ray_batch_size: int = RAY_BATCH,
) -> None:
    """Make base images + metadata only (curate outputs/stage1/, then run `bestshot upscale`).

    With --ray and --count N the N images are spread over Ray workers (same seeds and files)."""
    from ..scale.cli_options import ray_cfg

    try:
        job = ray_cfg(ray, ray_workers, gpus_per_worker, cpus_per_worker, ray_batch_size)
    except BestshotError as e:
        _say(f"error: {e}")
        raise typer.Exit(2) from None
    _main("stage1", config, once, count, init=True, job=job)


@app.command("upscale")
def upscale(config: Path = CONFIG) -> None:
    """Take every surviving outputs/stage1 image without a final output through stages 2 and 3."""
    _main("upscale", config, False, None, init=False)


@app.command("run")
def run(
    once: bool = typer.Option(False, "--once", help="Make one image and stop."),
    count: int | None = typer.Option(None, "--count", "-n", help="Make N images and stop."),
    config: Path = CONFIG,
) -> None:
    """All enabled stages per image, continuously until Ctrl-C (or --once / --count N)."""
    _main("run", config, once, count, init=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
