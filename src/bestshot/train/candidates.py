"""Candidate sets: N generated images per world prompt with the oracle's verdict on each, cached on disk.

Two users:

* ``bestshot eval world --cache DIR`` generates each prompt's candidates once; scoring them again with
  another scorer (``--scorer runs/.../clip``) then costs seconds instead of an hour on CPU.
* ``bestshot train clip`` with ``ranked_model``: a scorer learns to rank by being shown, for a training
  prompt, which of the generator's own candidates the oracle accepts and which it rejects (a reward model
  trained on an annotator's labels; here the annotator is the oracle). The prompts come from an rng
  namespace of their own, never the held-out evaluation set.

A set is valid only for the generator that drew it: the cache records a fingerprint of the UNet and of
the CLIP text tower (which conditions the UNet), plus seeds, steps and guidance, and is rebuilt when any
differs. It is saved every ``save_every`` prompts (temporary file, then rename), so a long build that is
stopped keeps its finished prompts and goes on from there.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bestshot import jsonio

from ..errors import BestshotError

ATTRS = ("match", "shape", "colour", "count", "position")


@dataclass
class CandidateSet:
    prompts: list[str]
    images: torch.Tensor  # uint8 (P, K, 3, H, W)
    verdicts: torch.Tensor  # bool (P, K, len(ATTRS))
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.prompts)

    def pil(self, p: int) -> list:
        from PIL import Image

        return [Image.fromarray(a) for a in self.images[p].permute(0, 2, 3, 1).numpy()]

    def verdict(self, p: int, k: int) -> dict[str, bool]:
        return {a: bool(self.verdicts[p, k, j]) for j, a in enumerate(ATTRS)}


def generator_fingerprint(pipe: Any) -> str:
    """A short hash of what decides the images: the embedded model's UNet and the CLIP text tower that
    conditions it (the whole CLIP and the guidance settings when spatial guidance steers with its image side too), or
    every torch module of another pipeline."""
    h = hashlib.sha256()
    clip = getattr(pipe, "clip", None)
    if clip is not None and getattr(pipe, "unet", None) is not None:
        sg = float(pipe.config.get("spatial_guidance_scale", 0.0) or 0.0) if hasattr(pipe, "config") else 0.0
        if sg > 0:
            h.update(f"spatial_guidance_scale={sg}".encode())
            end = float(pipe.config.get("spatial_guidance_end", 1.0))
            if end != 1.0:  # (the defaults left out: caches drawn before the options stay valid)
                h.update(f"spatial_guidance_end={end}".encode())
            every = int(pipe.config.get("spatial_guidance_every", 1))
            if every != 1:
                h.update(f"spatial_guidance_every={every}".encode())
            parts = [("unet", pipe.unet), ("clip", clip)]
        else:
            parts = [("unet", pipe.unet), ("text", clip.text_model), ("text_projection", clip.text_projection)]
    else:
        parts = [(k, v) for k, v in sorted(pipe.components.items()) if isinstance(v, torch.nn.Module)]
    for name, module in parts:
        for key, t in sorted(module.state_dict().items()):
            h.update(f"{name}.{key}".encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def training_prompts(n: int, seed: int, two_object_share: float = 0.7, exclude: Sequence[str] = ()) -> list[str]:
    """``n`` distinct world prompts (1 or 2 objects, relations stated) from the ``ranked`` namespace."""
    from .. import world as W

    skip, out, i = set(exclude), [], 0
    while len(out) < n:
        rng = random.Random(f"bestshot-world:ranked:{seed}:{i}")
        i += 1
        n_obj = 2 if rng.random() < two_object_share else 1
        scene = W.sample_scene(rng, n_objects=n_obj)
        p = W.caption(scene, rng, require_relation=True)
        if p not in skip:
            skip.add(p)
            out.append(p)
    return out


def _load(path: Path, meta: dict[str, Any] | None) -> CandidateSet | None:
    """The set saved at ``path`` if it was made with ``meta`` (``None``: whatever it was made with)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        saved = json.loads((f.metadata() or {}).get("bestshot", "{}"))
    prompts = saved.pop("prompts", [])
    if meta is not None and saved != meta:
        return None
    t = load_file(str(path))
    return CandidateSet(prompts, t["images"], t["verdicts"], saved)


def load_candidates(path: str | Path) -> CandidateSet:
    """A candidate set saved by :func:`build_candidates` (``eval world --cache``, ``train clip``'s ranked cache)."""
    cs = _load(Path(path), None)
    if cs is None:
        raise BestshotError(f"no candidate set at {path} — build one with `bestshot eval world --cache DIR`")
    return cs


def _save(path: Path, cs: CandidateSet) -> None:
    from safetensors.torch import save

    from ..store import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    blob = save(
        {"images": cs.images.contiguous(), "verdicts": cs.verdicts.contiguous()},
        metadata={"bestshot": jsonio.dumps({**cs.meta, "prompts": cs.prompts})},
    )
    atomic_write_bytes(path, blob)


def build_candidates(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    gen_cfg: Any,
    cache: str | Path | None = None,
    prompts_per_call: int = 4,
    save_every: int = 16,
    progress: bool = True,
    label: str = "candidates",
) -> CandidateSet:
    """Candidates ``seeds`` of every prompt (the same images ``bestshot generate`` would make: image k
    depends on its seed alone) with oracle verdicts. With ``cache``, finished prompts are reused."""
    from ..generation import pipeline_kwargs
    from ..world.oracle import oracle

    meta = {
        "generator": generator_fingerprint(pipe) if cache else None,
        "seeds": [int(s) for s in seeds],
        "steps": gen_cfg.steps_base,
        "guidance": gen_cfg.guidance,
        "size": [gen_cfg.width, gen_cfg.height],
        "scheduler": gen_cfg.scheduler,
    }
    path = Path(cache) if cache else None
    done = _load(path, meta) if path else None
    prompts = list(prompts)
    if done is not None and done.prompts[: len(prompts)] == prompts[: len(done.prompts)]:
        have = min(len(done.prompts), len(prompts))
        cs = CandidateSet(prompts[:have], done.images[:have], done.verdicts[:have], meta)
    else:
        cs = CandidateSet(
            [],
            torch.empty((0, len(seeds), 3, gen_cfg.height, gen_cfg.width), dtype=torch.uint8),
            torch.empty((0, len(seeds), len(ATTRS)), dtype=torch.bool),
            meta,
        )
    todo = list(range(len(cs), len(prompts), prompts_per_call))
    if progress and todo:
        from rich.progress import track

        todo = track(todo, description=f"{label} ({len(cs)}/{len(prompts)} cached)", transient=True)
    pipe.set_progress_bar_config(disable=True)
    since_save = 0
    for start in todo:
        chunk = prompts[start : start + prompts_per_call]
        # one call for the whole chunk: prompt k's images use the same per-seed generators as generate()
        kw = pipeline_kwargs(pipe, chunk[0], "", list(seeds), gen_cfg, None)
        kw.pop("num_images_per_prompt", None)
        kw.update(
            prompt=[p for p in chunk for _ in seeds],
            generator=[torch.Generator("cpu").manual_seed(int(s)) for _ in chunk for s in seeds],
        )
        images = pipe(**kw).images
        arr = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)
        verdicts = torch.tensor(
            [[bool(getattr(oracle(im, p), a)) for a in ATTRS] for p, im in zip(kw["prompt"], images)]
        )
        k = len(seeds)
        cs = CandidateSet(
            cs.prompts + chunk,
            torch.cat([cs.images, arr.reshape(len(chunk), k, *arr.shape[1:])]),
            torch.cat([cs.verdicts, verdicts.reshape(len(chunk), k, len(ATTRS))]),
            meta,
        )
        since_save += len(chunk)
        if path and since_save >= save_every:
            _save(path, cs)
            since_save = 0
    if path and since_save:
        _save(path, cs)
    return cs


RANKED_SEED_BASE = 1000  # candidate seeds of training sets (evaluation uses 0..N-1)


def training_set(
    model: str,
    n_prompts: int,
    seed: int = 0,
    n_candidates: int = 8,
    cache: str | Path | None = None,
    device: str | None = None,
    prompts_per_call: int = 4,
    progress: bool = True,
) -> CandidateSet:
    """The ranking training set of ``bestshot train clip`` (``ranked_model``): ``n_prompts`` training prompts
    (none of them in ``bestshot eval world``'s held-out set), ``n_candidates`` candidates each, with verdicts."""
    from ..models.loader import load_pipeline
    from ..models.settings import resolve_config
    from ..world import heldout_prompts

    gen_cfg = resolve_config(
        None, model=model, n_images=n_candidates, gate=False, **({"device": device} if device else {})
    )
    pipe = load_pipeline(model, dtype=gen_cfg.dtype, device=gen_cfg.device, scheduler=gen_cfg.scheduler)
    if getattr(pipe, "clip", None) is None:
        raise BestshotError(
            f"{model} is not a bestshot world pipeline — ranked_model takes 'embedded' or a folder "
            "written by `bestshot train export`"
        )
    exclude = heldout_prompts(200, n_objects=1) + heldout_prompts(200, n_objects=2)
    prompts = training_prompts(n_prompts, seed, exclude=exclude)
    seeds = [RANKED_SEED_BASE + k for k in range(n_candidates)]
    return build_candidates(
        pipe,
        prompts,
        seeds,
        gen_cfg,
        cache=cache,
        prompts_per_call=prompts_per_call,
        progress=progress,
        label="ranking candidates",
    )


def mixed_groups(cs: CandidateSet) -> list[int]:
    """Prompts whose candidates the oracle both accepts and rejects: the only ones a ranker can learn from."""
    m = cs.verdicts[:, :, 0]
    return [p for p in range(len(cs)) if bool(m[p].any()) and not bool(m[p].all())]
