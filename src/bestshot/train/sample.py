"""``bestshot train sample``: DDPM or DDIM sampling with guidance weight w, a grid PNG and a denoising GIF.

Works from a training checkpoint (EMA weights) or an exported pipeline folder, so a run can be looked at
while it is still training.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from PIL import Image

from bestshot.errors import BestshotError


def load_pipeline(checkpoint: str | Path):
    """Pipeline from a pipeline folder (model_index.json) or a training checkpoint (file or run folder)."""
    from bestshot.models.loader import dtype_kwargs
    from bestshot.models.world_pipeline import BestshotWorldPipeline
    from bestshot.train.ddpm import pipeline_from_checkpoint

    p = Path(checkpoint)
    if p.is_dir() and (p / "model_index.json").is_file():
        return BestshotWorldPipeline.from_pretrained(p, **dtype_kwargs(torch.float32))
    if p.exists():
        return pipeline_from_checkpoint(p)[0]
    raise BestshotError(
        f"{checkpoint} is neither a pipeline folder nor a checkpoint — pass a run folder, a .pt file "
        "or an exported model folder"
    )


def set_scheduler(pipe, name: str) -> None:
    if name == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    elif name == "ddpm":
        cfg = {k: v for k, v in pipe.scheduler.config.items() if k != "set_alpha_to_one"}
        pipe.scheduler = DDPMScheduler.from_config(cfg)
    else:
        raise BestshotError(f"unknown scheduler {name!r} — use ddim or ddpm")


def to_grid(images: np.ndarray, rows: int, scale: int = 4, pad: int = 2) -> Image.Image:
    """(N, H, W, 3) floats in [0, 1] → one PIL grid, ``rows`` rows, upscaled by ``scale`` (nearest)."""
    n, h, w, _ = images.shape
    cols = (n + rows - 1) // rows
    H, W = h * scale, w * scale
    grid = Image.new("RGB", (cols * (W + pad) + pad, rows * (H + pad) + pad), (40, 40, 40))
    for k in range(n):
        im = Image.fromarray((np.clip(images[k], 0, 1) * 255).round().astype(np.uint8)).resize((W, H), Image.NEAREST)
        grid.paste(im, (pad + (k % cols) * (W + pad), pad + (k // cols) * (H + pad)))
    return grid


def _save_atomic(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    img.save(tmp, **kw)
    os.replace(tmp, path)


def sample(
    checkpoint: str | Path,
    prompts: list[str],
    out: str | Path = "grid.png",
    n: int = 4,
    scheduler: str = "ddim",
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    gif: str | Path | None = None,
    gif_mode: str = "x0",
    similarity: str | Path | None = None,
) -> Path:
    """Sample ``n`` images per prompt; rows = prompts. ``gif`` records predicted x0 (or x_t) at every step;
    ``similarity`` plots the model's CLIP cosine similarity of every prompt with every sample (a
    text↔image similarity matrix: a model that follows its prompts has its maxima in the prompt's own block)."""
    if not prompts:
        raise BestshotError('no prompts — pass --prompts "a red circle" "a blue square"')
    if gif_mode not in ("x0", "xt"):
        raise BestshotError("gif mode must be x0 or xt")
    pipe = load_pipeline(checkpoint)
    set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    defaults = {}
    p = Path(checkpoint)
    if p.is_dir() and (p / "bestshot_defaults.json").is_file():
        import json

        defaults = json.loads((p / "bestshot_defaults.json").read_text())
    from bestshot.models.world_pipeline import DEFAULTS

    if steps is not None and steps < 1:
        raise BestshotError(f"--steps must be >= 1 (got {steps})")
    if steps is None:
        steps = defaults.get("num_inference_steps", DEFAULTS["num_inference_steps"])
        if scheduler == "ddpm":
            steps = max(steps, 100)  # ancestral DDPM needs many steps; the default for it is 100
    elif scheduler == "ddpm" and steps < 50:
        # honoured as asked (DDPMScheduler.set_timesteps takes any count), but said out loud
        warnings.warn(
            f"ancestral DDPM with {steps} steps gives rough images — 100 or more is usual "
            "(or use --scheduler ddim for few steps)",
            stacklevel=2,
        )
    guidance = guidance if guidance is not None else defaults.get("guidance_scale", DEFAULTS["guidance_scale"])
    gens = [torch.Generator().manual_seed(seed + k) for k in range(n * len(prompts))]
    frames: list[Image.Image] = []

    def record(pipe_, i, t, kw):
        x = kw.get("pred_original_sample") if gif_mode == "x0" else kw.get("latents")
        if x is None:
            x = kw["latents"]
        arr = (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        frames.append(to_grid(arr, rows=len(prompts)))
        return {}

    res = pipe(
        prompts,
        num_images_per_prompt=n,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=gens,
        output_type="np",
        callback_on_step_end=record if gif else None,
        callback_on_step_end_tensor_inputs=["latents", "pred_original_sample"],
    )
    out = Path(out)
    grid = to_grid(res.images, rows=len(prompts))
    _save_atomic(grid, out)
    if similarity:
        similarity_matrix(pipe, prompts, res.images, n, similarity)
    if gif:
        frames.append(grid)
        _save_atomic(frames[0], Path(gif), save_all=True, append_images=frames[1:] + [grid] * 5, duration=80, loop=0)
    return out


@torch.no_grad()
def similarity_matrix(pipe, prompts: list[str], images: np.ndarray, n: int, path: str | Path) -> np.ndarray:
    """CLIP cosine similarity of each prompt (rows) with each image (columns; ``n`` per prompt, in order),
    with the pipeline's own CLIP, plotted to ``path``; returns the matrix."""
    from bestshot.models.clip_preprocess import clip_preprocess
    from bestshot.train.common import plot_similarity
    from bestshot.train.ddpm import encode_images, encode_text

    clip = pipe.clip.float()
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1
    img = encode_images(clip, x, clip_preprocess(None, clip))
    txt = encode_text(clip, pipe.tokenizer, list(prompts), "text_embed")[1]
    sim = (txt @ img.T).cpu().numpy()
    cols = [f"{i}.{k}" for i in range(len(prompts)) for k in range(n)]
    plot_similarity(sim, [f"{i}: {p}" for i, p in enumerate(prompts)], cols, path, "prompt vs sample (CLIP cosine)")
    return sim
