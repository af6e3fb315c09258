"""The model work of each stage, on PIL images; no files here (the workflow names and writes them).

* stage 1: text → image through the best-of-N core :func:`bestshot.generation.best_of_n` (seeded generator,
  OOM halving, SDXL refiner handoff), so a stage 1 image is made exactly like a ``generate`` candidate;
* stage 2: Lanczos ×scale, then img2img at a low strength (optionally handing the last part to the
  SDXL refiner);
* stage 3: Real-ESRGAN (or Lanczos) ×scale, then optional sliding-window img2img over overlapping
  tiles, blended by :func:`bestshot.upscale.tiled.refine_tiled`.

img2img reuses the loaded text-to-image pipeline's modules (``AutoPipelineForImage2Image.from_pipe``),
so no weights are loaded twice. The embedded pixel-space model has no img2img class: it gets SDEdit
built from its own UNet, scheduler and CLIP (:class:`PixelSDEdit`). Any other pipeline with no img2img
gets the upscale without the diffusion refinement (with a warning).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..config import ImgCfg
from ..errors import BestshotError
from ..prompts.build import BuiltPrompt


def txt2img(
    pipe: Any,
    refiner: Any,
    prompt: BuiltPrompt,
    seed: int,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    refiner_split: float,
) -> Image.Image:
    """One stage 1 image: the best-of-N core (:func:`bestshot.generation.best_of_n`) with one candidate."""
    from ..generation import best_of_n
    from ..record import RunRecord

    cfg = ImgCfg(
        n_images=1,
        seed_base=seed,
        steps_base=steps,
        guidance=guidance,
        width=width,
        height=height,
        refiner=refiner is not None,
        refiner_split=refiner_split,
        max_batch=1,
    )
    return best_of_n(pipe, cfg, prompt, None, RunRecord.of(cfg, prompt), refiner=refiner)[0]


def img2img_pipeline(pipe: Any, family: Any) -> Any | None:
    """An img2img pipeline sharing ``pipe``'s modules, ``pipe`` itself if it takes an image, or None."""
    if family.img2img_class:
        from diffusers import AutoPipelineForImage2Image

        i2i = AutoPipelineForImage2Image.from_pipe(pipe)
        if hasattr(i2i, "set_progress_bar_config"):
            i2i.set_progress_bar_config(disable=True)
        return i2i
    params = inspect.signature(pipe.__call__).parameters
    if "image" in params and "strength" in params:
        return pipe
    if hasattr(pipe, "sdedit"):  # the embedded model's pipelines (diffusers or torch-only)
        return PixelSDEdit(pipe)
    return None


class PixelSDEdit:
    """img2img for the embedded pixel-space model (no VAE, no img2img class of its own): SDEdit.

    Noise the image to ``strength`` of the schedule with the pipeline's scheduler, then denoise the
    remaining steps with its UNet and CLIP conditioning (classifier-free guidance on the negative
    prompt), exactly as ``BestshotWorldPipeline.__call__`` does from pure noise.
    """

    def __init__(self, pipe: Any):
        self.pipe = pipe

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        image: Image.Image,
        strength: float,
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator,
        negative_prompt: str | None = None,
    ):
        from types import SimpleNamespace

        import numpy as np

        size = image.size
        snap = (max(8, size[0] // 8 * 8), max(8, size[1] // 8 * 8))  # the UNet halves the size per level
        if min(int(num_inference_steps * strength), num_inference_steps) < 1:
            return SimpleNamespace(images=[image])
        arr = np.asarray(lanczos(image.convert("RGB"), snap), dtype=np.float32) / 127.5 - 1.0
        x0 = torch.from_numpy(arr).permute(2, 0, 1)[None]
        x = self.pipe.sdedit(
            x0, [prompt], strength, num_inference_steps, guidance_scale, [negative_prompt or ""], generator
        )
        out = ((x[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        return SimpleNamespace(images=[lanczos(Image.fromarray(out), size)])


def _generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(seed))


def img2img(
    i2i: Any,
    refiner: Any,
    image: Image.Image,
    prompt: BuiltPrompt,
    seed: int,
    strength: float,
    steps: int,
    guidance: float,
    refiner_split: float = 0.8,
) -> Image.Image:
    """Denoise ``image`` from ``strength`` of the way (SDEdit); with ``refiner`` the last part is its.

    ``steps`` is raised to at least ``1/strength`` so at least one step runs (diffusers runs
    ``int(steps * strength)`` of them).
    """
    steps = max(int(steps), math.ceil(1.0 / strength))
    neg = prompt.negative_prompt or None
    kw: dict[str, Any] = dict(
        prompt=prompt.sd_prompt,
        negative_prompt=neg,
        image=image.convert("RGB"),
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=_generator(seed),
    )
    if refiner is None:
        return i2i(**kw).images[0]
    latents = i2i(**kw, denoising_end=refiner_split, output_type="latent").images
    return refiner(
        prompt=prompt.sd_prompt,
        negative_prompt=neg,
        image=latents,
        strength=strength,
        num_inference_steps=steps,
        denoising_start=refiner_split,
        guidance_scale=guidance,
        generator=_generator(seed),
    ).images[0]


def lanczos(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == tuple(size) else image.resize(tuple(size), Image.Resampling.LANCZOS)


def make_upscaler(backend: str, model: str, weights: Path | None, tile: int, tile_pad: int, device: str | None):
    """``get_upscaler`` with the document's rule: if Real-ESRGAN cannot run, Lanczos with a warning."""
    from ..upscale.esrgan import get_upscaler

    if backend == "auto" and weights is not None and not Path(weights).is_file():
        weights = None  # auto: the .pth when present, else ncnn, else Lanczos
    try:
        return get_upscaler(
            backend,
            model=model,
            weights=weights if backend in ("torch", "auto") else None,
            tile=tile,
            tile_pad=tile_pad,
            device=device if backend == "torch" else None,
        )
    except BestshotError as e:
        warnings.warn(f"Real-ESRGAN ({backend}) is not available, falling back to Lanczos, which adds no detail: {e}")
        return get_upscaler("lanczos")


def esrgan_upscale(upscaler: Any, image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Upscale to exactly ``size``: the upscaler at the smallest whole factor that reaches it, then Lanczos."""
    factor = max(1, math.ceil(max(size[0] / image.width, size[1] / image.height)))
    out = upscaler.upscale(image.convert("RGB"), factor) if factor > 1 else image.convert("RGB")
    return lanczos(out, size)


def refine_tiles(
    image: Image.Image,
    refine: Callable[[Image.Image, int], Image.Image],
    tile_size: int,
    overlap: int,
    mode: str,
    tiles_dir: Path | None,
    tile_name: str,
) -> Image.Image:
    """Sliding-window img2img: ``refine(tile, index)`` per tile, blended with cosine/linear ramps."""
    import sys

    from ..upscale.tiled import refine_tiled

    counter = iter(range(1 << 30))
    return refine_tiled(
        image,
        lambda tile, box: refine(tile, next(counter)),
        tile_size=tile_size,
        overlap=overlap,
        mode=mode,
        progress=sys.stderr.isatty(),
        tiles_dir=tiles_dir,
        tile_name=tile_name,
    )
