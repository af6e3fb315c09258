"""Feature extraction on Ray Data for ``bestshot eval metrics --ray``: the images are read and embedded by Ray
workers, the features come back to the driver, and the statistics (FID, KID, IS, CMMD, CLIP score) are
computed there by the ordinary single-process code.

:class:`RayFeatureExtractor` stands in for an extractor (``bestshot.evaluate.features``: same ``name`` and
``resize``, ``text_features``), built from a *factory*: a picklable callable that returns the real extractor
(e.g. ``functools.partial(ClipExtractor, folder, resize="clean")``), called once per Ray worker — the
``map_batches`` callable class :class:`ExtractWorker` loads it in its constructor, one per GPU
(``num_gpus=1``) or per ``num_cpus`` on CPU. ``bestshot.evaluate`` hands the extractor over to
:meth:`RayFeatureExtractor.extract_items` for a whole list of image paths, so only paths travel to the
workers, never pixels.

Same numbers as one process: the images are cut into exactly the batches the single-process path feeds the
extractor (``batch_size`` images each, in order; captions in the extractor's own ``batch_size``), one Ray
row per batch, so every network call sees the same inputs; the rows come back with their index and are put
back in order before any statistic is computed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import BestshotError
from ..store import open_rgb
from .cluster import require_ray
from .remote_errors import remote_error

Factory = Callable[[], Any]


class ExtractWorker:
    """Ray Data ``map_batches`` callable class: loads the extractor once, then embeds one chunk per row.

    Input rows: ``{"job", "start", "mode", "items"}`` — ``items`` a chunk of image paths (modes ``features``,
    ``features_and_logits``) or captions (``text``), ``start`` the index of its first item in its job. Output:
    one row per item, ``{"job", "index", "worker", "features"}`` (+ ``"logits"`` in ``features_and_logits``).
    """

    def __init__(self, factory: Factory) -> None:
        self.extractor = factory()

    def _one(self, mode: str, items: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        if mode == "text":
            return np.asarray(self.extractor.text_features([str(x) for x in items])), None
        images = [open_rgb(x) for x in items]
        if mode == "features":
            return np.asarray(self.extractor.features(images)), None
        if hasattr(self.extractor, "features_and_logits"):
            f, lg = self.extractor.features_and_logits(images)
            return np.asarray(f), np.asarray(lg)
        return np.asarray(self.extractor.features(images)), np.asarray(self.extractor.logits(images))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        jobs, index, feats, logits = [], [], [], []
        for job, start, mode, items in zip(batch["job"], batch["start"], batch["mode"], batch["items"]):
            items = list(items)
            f, lg = self._one(str(mode), items)
            feats.append(f)
            if lg is not None:
                logits.append(lg)
            index.append(np.arange(int(start), int(start) + len(items), dtype=np.int64))
            jobs.append(np.full(len(items), int(job), dtype=np.int64))
        out = {"job": np.concatenate(jobs), "index": np.concatenate(index), "features": np.concatenate(feats)}
        out["worker"] = np.full(len(out["index"]), os.getpid(), dtype=np.int64)
        if logits:
            out["logits"] = np.concatenate(logits)
        return out


def _describe(factory: Factory) -> dict[str, Any]:
    """What the driver needs to know about the extractor, read on a worker (the driver loads no model)."""
    ext = factory()
    return {
        "name": ext.name,
        "resize": ext.resize,
        "batch_size": int(getattr(ext, "batch_size", 32) or 32),
        "logits": hasattr(ext, "features_and_logits") or hasattr(ext, "logits"),
        "text": hasattr(ext, "text_features"),
    }


class RayFeatureExtractor:
    """An extractor whose work runs on Ray Data (see the module docstring); Ray must be initialised.

    ``workers``: how many extractor copies run at once (default: one per GPU of the cluster with
    ``num_gpus`` > 0, else one per ``num_cpus`` CPUs); ``num_gpus`` / ``num_cpus``: per worker.
    """

    def __init__(
        self, factory: Factory, *, workers: int | None = None, num_gpus: float = 0.0, num_cpus: float = 1.0
    ) -> None:
        ray = require_ray()
        if not ray.is_initialized():
            raise BestshotError("RayFeatureExtractor needs a running Ray — connect first (bestshot.scale.cluster)")
        if num_gpus < 0 or num_cpus < 0 or (num_gpus == 0 and num_cpus == 0):
            raise BestshotError(
                f"workers need GPUs or CPUs: --gpus-per-worker {num_gpus:g}, --cpus-per-worker "
                f"{num_cpus:g} (both >= 0, not both 0)"
            )
        if workers is not None and workers < 1:
            raise BestshotError(f"--ray-workers must be >= 1 (got {workers})")
        self.factory, self.num_gpus, self.num_cpus = factory, float(num_gpus), float(num_cpus)
        if workers is None:
            res = ray.cluster_resources()
            workers = int(res.get("GPU", 0) // num_gpus) if num_gpus else int(res.get("CPU", 1) // num_cpus)
        self.workers = max(1, workers)
        try:
            probe = ray.remote(_describe).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)
            self.info = ray.get(probe.remote(factory))
        except Exception as e:  # noqa: BLE001 - a worker's error, wrapped by Ray
            raise remote_error(e, "feature extraction on Ray") from None
        self.name, self.resize = self.info["name"], self.info["resize"]
        self.batch_size = self.info["batch_size"]
        self.last_workers: list[int] = []
        self._memo: dict[tuple, dict[str, np.ndarray]] = {}  # prefetched results, taken once

    def __repr__(self) -> str:
        return f"RayFeatureExtractor({self.name!r}, workers={self.workers})"

    # ------------------------------------------------------------------------------ the Ray Data job
    def _run(self, jobs: list[tuple[Sequence[Any], int, str]]) -> list[dict[str, np.ndarray]]:
        """One Ray Data pipeline for several ``(items, chunk, mode)`` jobs (the workers load the extractor once
        for all of them); per job, its outputs in item order."""
        ray = require_ray()
        rows = [
            {
                "job": j,
                "start": i,
                "mode": mode,
                "items": [os.fspath(x) if isinstance(x, os.PathLike) else x for x in items[i : i + chunk]],
            }
            for j, (items, chunk, mode) in enumerate(jobs)
            for i in range(0, len(items), chunk)
        ]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(
            ExtractWorker,
            fn_constructor_kwargs={"factory": self.factory},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(rows))),
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
        )
        parts: dict[str, list[np.ndarray]] = {}
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for k, v in batch.items():
                    parts.setdefault(k, []).append(np.asarray(v))
        except Exception as e:  # noqa: BLE001 - a worker's error, wrapped by Ray Data
            raise remote_error(e, "feature extraction on Ray") from None
        out = {k: np.concatenate(v) for k, v in parts.items()}
        self.last_workers = sorted(int(w) for w in np.unique(out["worker"]))  # process ids that did the work
        results = []
        for j, (items, _, _) in enumerate(jobs):
            mine = np.flatnonzero(out["job"] == j)
            mine = mine[np.argsort(out["index"][mine], kind="stable")]
            if not np.array_equal(out["index"][mine], np.arange(len(items))):
                raise BestshotError(f"Ray returned features for {len(mine)} of {len(items)} items — rerun")
            results.append({k: v[mine] for k, v in out.items() if k not in ("job", "index", "worker")})
        return results

    @staticmethod
    def _key(items: Sequence[Any], chunk: int, mode: str) -> tuple | None:
        if not all(isinstance(x, (str, os.PathLike)) for x in items):
            return None  # in-memory images are not remembered
        return (mode, chunk, tuple(os.fspath(x) for x in items))

    def _get(self, items: Sequence[Any], chunk: int, mode: str) -> dict[str, np.ndarray]:
        for m in (mode, "features_and_logits") if mode == "features" else (mode,):
            key = self._key(items, chunk, m)
            if key is not None and key in self._memo:
                return self._memo.pop(key)
        return self._run([(items, chunk, mode)])[0]

    def prefetch(self, images: Sequence[Any], batch_size: int = 32, captions: Sequence[str] | None = None) -> None:
        """Embed ``images`` (with logits when the extractor has them) and ``captions`` in one pipeline; the
        next ``extract_items[_and_logits]`` / ``text_features`` of the same items take the results from here."""
        mode = "features_and_logits" if self.info["logits"] else "features"
        jobs = [(list(images), batch_size, mode)] if len(images) else []
        if captions is not None and len(captions) and self.info["text"] and not self.info["logits"]:
            jobs.append((list(captions), self.batch_size, "text"))
        keys = [self._key(*job) for job in jobs]
        jobs = [job for job, key in zip(jobs, keys) if key is not None]
        if jobs:
            for job, res in zip(jobs, self._run(jobs)):
                self._memo[self._key(*job)] = res

    def extract_items(self, items: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Features of image paths (or PIL images), in order — ``extract(extractor, items, batch_size)``."""
        if len(items) == 0:
            raise BestshotError("empty image set — point the evaluation at a folder or manifest with images")
        return self._get(items, batch_size, "features")["features"]

    def extract_items_and_logits(
        self, items: Sequence[Any], batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Features and class logits (None when the extractor has none), in order."""
        if not self.info["logits"]:
            return self.extract_items(items, batch_size), None
        out = self._get(items, batch_size, "features_and_logits")
        return out["features"], out["logits"]

    def features(self, images: list[Any]) -> np.ndarray:
        """The extractor protocol's ``features`` (a list of PIL images), on Ray as well."""
        return self.extract_items(images, self.batch_size)

    def text_features(self, captions: list[str]) -> np.ndarray:
        """Text embeddings of ``captions`` (CLIP score), in the extractor's own batches."""
        if not self.info["text"]:
            raise BestshotError(f"{self.name} has no text tower — CLIP score needs a CLIP extractor")
        if not captions:
            raise BestshotError("no captions to embed")
        return self._get(list(captions), self.batch_size, "text")["features"]


__all__ = ["RayFeatureExtractor", "ExtractWorker"]
