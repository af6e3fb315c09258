"""diffusers' ``DDIMScheduler`` on torch alone (deterministic, ``eta=0``; no thresholding, no zero-SNR rescale).

Named as diffusers names it, so the sampler label (``bestshot.schedulers.sampler_label``) and
``build_scheduler`` (another sampler built ``from_config`` of this one's config) treat it the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .unet import Config, Unsupported

_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "clip_sample": True,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}


@dataclass
class DDIMSchedulerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class DDIMScheduler:
    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        args = dict(locals())
        self.config = Config({k: args[k] for k in _DEFAULTS})
        c = self.config
        if c.thresholding or c.rescale_betas_zero_snr or c.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise Unsupported("DDIM thresholding / zero-SNR rescale / prediction type")
        if c.trained_betas is not None:
            betas = torch.tensor(c.trained_betas, dtype=torch.float32)
        elif c.beta_schedule == "linear":
            betas = torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps, dtype=torch.float32)
        elif c.beta_schedule == "scaled_linear":
            betas = torch.linspace(c.beta_start**0.5, c.beta_end**0.5, c.num_train_timesteps, dtype=torch.float32) ** 2
        else:
            raise Unsupported(f"beta_schedule={c.beta_schedule!r}")
        if c.timestep_spacing not in ("linspace", "leading", "trailing"):
            raise Unsupported(f"timestep_spacing={c.timestep_spacing!r}")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if c.set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(0, c.num_train_timesteps)[::-1].copy().astype(np.int64))

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> DDIMScheduler:
        """Like diffusers' ``from_config``: the config's own keys this class takes, ``kwargs`` over them."""
        return cls(**{k: v for k, v in {**config, **kwargs}.items() if k in _DEFAULTS})

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        c, n = self.config, num_inference_steps
        if n > c.num_train_timesteps:
            raise ValueError(f"num_inference_steps {n} > num_train_timesteps {c.num_train_timesteps}")
        self.num_inference_steps = n
        if c.timestep_spacing == "linspace":
            ts = np.linspace(0, c.num_train_timesteps - 1, n).round()[::-1].copy().astype(np.int64)
        elif c.timestep_spacing == "leading":
            ts = (np.arange(0, n) * (c.num_train_timesteps // n)).round()[::-1].copy().astype(np.int64)
            ts += c.steps_offset
        else:
            ts = np.round(np.arange(c.num_train_timesteps, 0, -c.num_train_timesteps / n)).astype(np.int64)
            ts -= 1
        self.timesteps = torch.from_numpy(ts).to(device)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def _alpha_prev(self, prev: Any) -> torch.Tensor:
        return self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' first")
        if eta:
            raise Unsupported("DDIM with eta > 0")
        c = self.config
        prev = timestep - c.num_train_timesteps // self.num_inference_steps
        a_t, a_prev = self.alphas_cumprod[timestep], self._alpha_prev(prev)
        b_t = 1 - a_t
        if c.prediction_type == "epsilon":
            x0, eps = (sample - b_t ** (0.5) * model_output) / a_t ** (0.5), model_output
        elif c.prediction_type == "sample":
            x0 = model_output
            eps = (sample - a_t ** (0.5) * x0) / b_t ** (0.5)
        else:
            x0 = (a_t**0.5) * sample - (b_t**0.5) * model_output
            eps = (a_t**0.5) * model_output + (b_t**0.5) * sample
        if c.clip_sample:
            x0 = x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        variance = ((1 - a_prev) / b_t) * (1 - a_t / a_prev)
        std = eta * variance ** (0.5)
        prev_sample = a_prev ** (0.5) * x0 + (1 - a_prev - std**2) ** (0.5) * eps
        return DDIMSchedulerOutput(prev_sample, x0) if return_dict else (prev_sample, x0)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.alphas_cumprod = self.alphas_cumprod.to(device=original.device)
        acp = self.alphas_cumprod.to(dtype=original.dtype)
        timesteps = timesteps.to(original.device)
        s = (acp[timesteps] ** 0.5).flatten()
        while s.dim() < original.dim():
            s = s.unsqueeze(-1)
        r = ((1 - acp[timesteps]) ** 0.5).flatten()
        while r.dim() < original.dim():
            r = r.unsqueeze(-1)
        return s * original + r * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
