"""The ``--ray`` flags shared by the Ray commands (``eval generate``, ``generate --prompts-file``,
``stage1 --count``, ``eval metrics``).

A bare ``--ray`` (a local Ray) works because those commands are declared with
``cls=scale.flags.RayFlagCommand``, which gives it the value ``local`` before parsing.
"""

from __future__ import annotations

import typer

from ..errors import BestshotError
from .batch import RayJobCfg

RAY = typer.Option(
    None,
    "--ray",
    metavar="[ADDRESS]",
    help="Run on Ray: bare --ray = a local Ray on this machine; --ray auto / HOST:PORT (the head's GCS, "
    "port 6379) = a Ray cluster (needs: pip install 'bestshot\\[ray]').",
)
RAY_WORKERS = typer.Option(
    None,
    "--ray-workers",
    min=1,
    help="Ray workers, each loads the model once (default: one per GPU, or one per "
    "--cpus-per-worker CPUs when the cluster has no GPU).",
)
GPUS_PER_WORKER = typer.Option(
    None,
    "--gpus-per-worker",
    min=0.0,
    help="GPUs per Ray worker: 1, or 0.5 for two workers on one GPU (default: 1 when the cluster has GPUs, else 0).",
)
CPUS_PER_WORKER = typer.Option(1.0, "--cpus-per-worker", min=0.01, help="CPUs per Ray worker.")
RAY_BATCH = typer.Option(1, "--ray-batch-size", min=1, help="Rows per Ray Data batch (map_batches batch_size).")


def ray_cfg(
    address: str | None, workers: int | None, gpus: float | None, cpus: float, batch_size: int
) -> RayJobCfg | None:
    """The job's :class:`RayJobCfg`, or None without ``--ray`` (the ``--ray-*`` flags then refuse)."""
    if address is None:
        given = [name for name, v in (("--ray-workers", workers), ("--gpus-per-worker", gpus)) if v is not None]
        if cpus != 1.0:
            given.append("--cpus-per-worker")
        if batch_size != 1:
            given.append("--ray-batch-size")
        if given:
            raise BestshotError(
                f"{', '.join(given)} only apply with --ray — add --ray (a local Ray) or --ray ADDRESS (a cluster)"
            )
        return None
    return RayJobCfg(
        address=address, workers=workers, gpus_per_worker=gpus, cpus_per_worker=cpus, batch_size=batch_size
    ).validate()


__all__ = ["RAY", "RAY_WORKERS", "GPUS_PER_WORKER", "CPUS_PER_WORKER", "RAY_BATCH", "ray_cfg"]
