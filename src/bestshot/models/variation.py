"""Variation seeds (A1111's ``subseed`` / ``subseed_strength``): each candidate's initial noise is the noise of
its seed slerped toward the noise of its variation seed.

As A1111 does with a batch, candidate i of a run uses ``seed_base + i`` and ``subseed + i``. The blend is
A1111's ``slerp`` (modules/rng.py) on each image's unit noise, drawn exactly as diffusers draws it (one CPU
generator per seed, ``randn_tensor``), and handed to the pipeline as ``latents=``: the pipeline scales it by its
scheduler's ``init_noise_sigma`` as it does its own noise, so strength 0 is the plain render bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import BestshotError


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's slerp, as written there (norms over dim 1 of a (C, H, W) noise; near-parallel inputs are
    blended linearly with A1111's own weights)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def latent_shape(pipe: Any, height: int, width: int) -> tuple[int, int, int]:
    """(channels, h, w) of one image's initial latent, as the pipeline's ``prepare_latents`` computes it."""
    unet = getattr(pipe, "unet", None)
    scale = getattr(pipe, "vae_scale_factor", None)
    if unet is None or scale is None or "latents" not in _call_params(pipe):
        raise BestshotError(
            f"variation seeds need a latent-diffusion pipeline (UNet + VAE), not {type(pipe).__name__} — drop --subseed"
        )
    return int(unet.config.in_channels), int(height) // scale, int(width) // scale


def unit_noise(seed: int, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """One image's unit Gaussian noise for ``seed`` (batch dim 1), drawn as diffusers' randn_tensor does."""
    from diffusers.utils.torch_utils import randn_tensor

    gen = torch.Generator("cpu").manual_seed(int(seed))
    return randn_tensor((1, *shape), generator=gen, device=torch.device("cpu"), dtype=dtype)


def variation_latents(
    seeds: Sequence[int], subseeds: Sequence[int], strength: float, shape: Sequence[int], dtype: torch.dtype
) -> torch.Tensor:
    """The batch's initial noise (unscaled): per image slerp(strength, noise(seed), noise(subseed))."""
    out = []
    for seed, sub in zip(seeds, subseeds):
        noise = unit_noise(seed, shape, dtype)
        if strength:
            sub_noise = unit_noise(sub, shape, dtype)
            noise = slerp(float(strength), noise[0].float(), sub_noise[0].float()).to(dtype)[None]
        out.append(noise)
    return torch.cat(out)


def subseeds_for(cfg: Any, seeds: Sequence[int]) -> list[int]:
    """The variation seed of each candidate: ``subseed + (seed - seed_base)``."""
    return [int(cfg.subseed) + int(s) - int(cfg.seed_base) for s in seeds]


@contextmanager
def prepared(pipe: Any, cfg: Any, prompt: str, negative: str, seeds: Sequence[int]) -> Iterator[dict[str, Any]]:
    """``latents=`` of the batch when a variation seed is set (nothing otherwise); changes nothing on ``pipe``.
    With a subseed at strength 0 the noise is still handed over: the same noise the pipeline would draw."""
    if cfg.subseed is None:
        yield {}
        return
    shape = latent_shape(pipe, cfg.height, cfg.width)
    dtype = getattr(pipe.unet, "dtype", torch.float32)
    yield {"latents": variation_latents(seeds, subseeds_for(cfg, seeds), cfg.subseed_strength, shape, dtype)}


def _call_params(pipe: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(pipe.__call__).parameters)
    except (TypeError, ValueError):
        return set()
