"""World items redrawn by a denoiser (SDEdit), so that a scorer learns what *generated* images look like.

Why: the embedded CLIP ranks the denoiser's images, but it was trained on exact renders. Generated shapes
have soft, rounded edges and textured backgrounds, and a CLIP trained on renders alone read the shape of
generated objects far worse than rendered ones. Here each render is noised to a low ``strength`` of the
schedule and denoised again by the model, conditioned on the render's own caption: the picture keeps the
render's content (so the caption stays a correct label) and takes on the generator's look.

The pool is computed once and cached in a safetensors file next to the run (reused while model, seed,
size, count and strengths are the same); :class:`GeneratedWorldHardNegatives` serves it like
:class:`bestshot.train.clip_train.WorldHardNegatives`, hard-negative captions included.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bestshot import jsonio
from bestshot.errors import BestshotError


def pool_meta(model: str, seed: int, n: int, size: int, strength: tuple[float, float], steps: int) -> dict:
    return {
        "model": str(model),
        "seed": seed,
        "n": n,
        "size": size,
        "strength": [float(s) for s in strength],
        "steps": steps,
    }


def build_pool(
    model: str,
    seed: int,
    n: int,
    size: int,
    strength: tuple[float, float] = (0.2, 0.4),
    steps: int = 30,
    batch_size: int = 64,
    cache: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> torch.Tensor:
    """World items ``0..n-1`` of ``seed`` redrawn by ``model`` at strengths spread over ``strength``:
    a uint8 tensor (n, 3, size, size). With ``cache``, a matching file is reused and a new one saved.
    ``device``: where the model runs (``auto`` = CUDA when present)."""
    from safetensors.torch import load_file, save

    from bestshot import world as W
    from bestshot.models.loader import load_pipeline
    from bestshot.store import atomic_write_bytes

    lo, hi = strength
    if not 0.0 < lo <= hi <= 1.0:
        raise BestshotError(f"generated_strength {list(strength)} must satisfy 0 < low <= high <= 1, e.g. [0.2, 0.4]")
    meta = pool_meta(model, seed, n, size, strength, steps)
    if cache and Path(cache).exists():
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as f:
            if json.loads((f.metadata() or {}).get("bestshot", "{}")) == meta:
                return load_file(str(cache))["images"]
    pipe = load_pipeline(model, dtype="float32", device=device)
    if getattr(pipe, "sdedit", None) is None:
        raise BestshotError(
            f"{model} is not a bestshot world pipeline (no sdedit) — pass the embedded model or a "
            "folder written by `bestshot train export`"
        )
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    out = torch.empty((n, 3, size, size), dtype=torch.uint8)
    batches = range(0, n, batch_size)
    if progress:
        from rich.progress import track

        batches = track(batches, description="generated pool", transient=True)
    n_batches = max(1, (n + batch_size - 1) // batch_size)
    for b in batches:
        idx = range(b, min(n, b + batch_size))
        items = [W.scene_for(seed, i) for i in idx]
        captions = [W.caption(scene, rng) for scene, rng in items]  # the item's positive caption (same rng)
        x0 = torch.stack([W.image_to_tensor(W.render(scene, size)) for scene, _ in items])
        s = lo + (hi - lo) * (b // batch_size) / max(1, n_batches - 1)
        x = pipe.sdedit(x0, captions, s, steps, 1.0, generator=g)
        out[b : b + len(idx)] = ((x.float().cpu() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    if cache:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, save({"images": out}, metadata={"bestshot": jsonio.dumps(meta)}))
    return out


class GeneratedWorldHardNegatives(torch.utils.data.Dataset):
    """Pool item ``i % len(pool)`` with the captions of world item ``i % len(pool)`` (positive + k hard negatives)."""

    def __init__(self, pool: torch.Tensor, seed: int, k: int, n_shape: int = 1, every_object: bool = False):
        self.pool, self.seed, self.k, self.n_shape, self.every_object = pool, seed, k, n_shape, every_object

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int):
        from bestshot import world as W
        from bestshot.train.hard_negatives import hard_negative_captions

        i = i % len(self.pool)
        scene, rng = W.scene_for(self.seed, i)
        pos, negs = hard_negative_captions(scene, rng, self.k, self.n_shape, self.every_object)
        return self.pool[i].float() / 127.5 - 1.0, pos, negs


class Interleaved(torch.utils.data.Dataset):
    """Every ``every``-th item from ``b`` (cycling), the rest from ``a``: a fixed mix, deterministic per index."""

    def __init__(self, a: torch.utils.data.Dataset, b: torch.utils.data.Dataset, every: int):
        self.a, self.b, self.every = a, b, every

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int):
        if i % self.every == self.every - 1:
            return self.b[(i // self.every) % len(self.b)]
        return self.a[i]
