"""How the embedded model samples: :class:`WorldSampling`, the ``__call__`` of its pipelines (torch alone).

Shared by :class:`~bestshot.models.world_pipeline.BestshotWorldPipeline` (a diffusers ``DiffusionPipeline``,
what training writes and ``from_pretrained`` reads) and :class:`~bestshot.models.lite.pipeline.LitePipeline`
(the same model on torch alone, what ``bestshot generate`` loads): both hold ``unet``, ``scheduler``,
``clip``, ``tokenizer`` and a ``config`` with ``conditioning`` and the ``spatial_guidance_*`` settings, and
provide ``device``, ``_execution_device``, ``progress_bar``, ``maybe_free_model_hooks`` and ``_output``.
The conditioning, spatial guidance and batch invariance are described in :mod:`bestshot.models.world_pipeline`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CONDITIONINGS = ("text_tokens", "text_embed", "image_embed")

DEFAULTS = {"num_inference_steps": 20, "guidance_scale": 4.0, "height": 32, "width": 32, "scheduler": "ddim"}


def check_guidance(scale: float, end: float, every: int) -> None:
    """Refuse spatial guidance settings the pipeline cannot use (ValueError naming the setting)."""
    if scale < 0:
        raise ValueError(f"spatial_guidance_scale must be >= 0, got {scale}")
    if not 0 < end <= 1:
        raise ValueError(f"spatial_guidance_end must be in (0, 1] (a fraction of the steps), got {end}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"spatial_guidance_every must be a whole number >= 1 (steer every k-th step), got {every!r}")


def randn(shape: tuple, generator: torch.Generator | None, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise as diffusers' ``randn_tensor`` draws it for one generator (a CPU generator draws on the
    CPU, then moves)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    rand_device = "cpu" if generator is not None and generator.device.type == "cpu" else device
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


class WorldSampling:
    """Text-to-image, SDEdit image-to-image and masked repaint for the embedded model (see the module doc)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "class_labels", "pred_original_sample"]

    @property
    def batch_invariant(self) -> bool:
        """Whether an image comes out bit for bit the same alone or in a batch of any size: measured on CPU
        in float32 (see :mod:`bestshot.models.batch_invariance`); GPU kernels make no such promise. When
        True, best-of-N need not re-render the kept image alone to make its seed reproduce it."""
        return self.device.type == "cpu" and self.unet.dtype == torch.float32

    # -------------------------------------------------------------------------------- spatial guidance
    @torch.no_grad()
    def _relation_texts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list] | None:
        """(A texts, B texts, relations) embedded for every prompt, or None when no prompt states a relation."""
        from .embedded_clip import text_features
        from .maskclip import parse_relation

        rels = [parse_relation(p) for p in prompts]
        if not any(rels):
            return None
        phrases = [t for r in rels for t in ((r.a, r.b) if r else ("", ""))]
        unique = {}
        for text in dict.fromkeys(phrases):  # each phrase alone, unpadded: its embedding never depends on the batch
            enc = self.tokenizer([text], truncation=True, return_tensors="pt").to(self.clip.device)
            unique[text] = F.normalize(text_features(self.clip, enc.input_ids, enc.attention_mask).float(), dim=-1)[0]
        emb = torch.stack([unique[t] for t in phrases])
        return emb[0::2], emb[1::2], rels

    def _spatial_step(self, latents: torch.Tensor, x0: torch.Tensor, t, texts, scale: float) -> torch.Tensor:
        """``latents`` nudged up the gradient of the relation agreement of ``x0`` (rows without a relation kept)."""
        from .embedded_clip import to_clip_pixels
        from .maskclip import agreement, centroids, dense_features

        ta, tb, rels = texts
        size = self.clip.config.vision_config.image_size
        with torch.enable_grad():
            x = x0.detach().float().clamp(-1, 1).requires_grad_(True)
            img = (
                x
                if x.shape[-1] == size and x.shape[-2] == size
                else F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            )
            dense = dense_features(self.clip, to_clip_pixels(img).to(self.clip.dtype))
            ca, cb = centroids(dense, ta, tb)
            total = sum(agreement(ca[i], cb[i], r.relation) for i, r in enumerate(rels) if r)
            (grad,) = torch.autograd.grad(total, x)
        return latents + (scale * self._x0_weight(t) * grad).to(latents.dtype)

    def _x0_weight(self, t) -> float:
        """How much of the clean image the sample the scheduler just returned holds: ``sqrt(alpha_bar)`` of
        its noise level where the scheduler samples in alpha space (x = sqrt(a) x0 + sqrt(1 - a) eps: DDIM,
        DPM++, UniPC), 1 where it samples in sigma space (x = x0 + sigma eps: Euler, Heun, LMS, DPM2, the
        k-diffusion family, whose timesteps are floats). The noise level is the scheduler's own sigma for
        the new sample where it keeps sigmas (Karras and other non-uniform schedules included), else the
        previous integer timestep's alpha_bar."""
        sched = self.scheduler
        if float(getattr(sched, "init_noise_sigma", 1.0)) != 1.0:  # sigma space: x0's weight is 1 at every sigma
            return 1.0
        sigmas, idx = getattr(sched, "sigmas", None), getattr(sched, "step_index", None)
        if sigmas is not None and idx is not None:  # VP sigma = sqrt((1 - a) / a)  =>  sqrt(a) = 1 / sqrt(1 + sigma²)
            sigma = float(sigmas[min(int(idx), len(sigmas) - 1)])
            return 1.0 / math.sqrt(1.0 + sigma * sigma)
        t = int(t)
        prev = (
            int(sched.previous_timestep(t))
            if hasattr(sched, "previous_timestep")
            else t - sched.config.num_train_timesteps // sched.num_inference_steps
        )
        alpha = sched.alphas_cumprod[prev] if prev >= 0 else getattr(sched, "final_alpha_cumprod", torch.tensor(1.0))
        return float(alpha) ** 0.5

    @staticmethod
    def _pixels(image: Any, width: int, height: int, n: int, device: Any, dtype: Any) -> torch.Tensor:
        """A PIL image (or list, or a [0, 1] tensor) → an (n, 3, height, width) tensor in [0, 1]."""
        if isinstance(image, torch.Tensor):
            x = image if image.dim() == 4 else image[None]
        else:
            ims = image if isinstance(image, (list, tuple)) else [image]
            arrs = [
                np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255
                for im in ims
            ]
            x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
        x = x.to(device=device, dtype=dtype)
        if x.shape[-2:] != (height, width):
            x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return x.expand(n, -1, -1, -1) if x.shape[0] == 1 else x

    def _step_kwargs(self, generator) -> dict:
        """``generator`` for the scheduler's step when it takes one (stochastic samplers: DDPM, Euler a);
        UniPC and others refuse the keyword."""
        import inspect

        return {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}

    def _predicted_x0(self, sample: torch.Tensor, pred: torch.Tensor, t) -> torch.Tensor | None:
        """The clean image the model predicts at ``t``, for schedulers whose step does not report it: those
        that sample in alpha space (x_t = sqrt(a) x0 + sqrt(1-a) eps, ``init_noise_sigma`` 1). None otherwise."""
        sched = self.scheduler
        acp = getattr(sched, "alphas_cumprod", None)
        if acp is None or float(getattr(sched, "init_noise_sigma", 1.0)) != 1.0:
            return None
        a = acp[int(t)].to(sample.device, torch.float32)
        kind = sched.config.get("prediction_type", "epsilon")
        x, p = sample.float(), pred.float()
        if kind == "epsilon":
            return (x - (1 - a).sqrt() * p) / a.sqrt()
        if kind == "v_prediction":
            return a.sqrt() * x - (1 - a).sqrt() * p
        return p if kind == "sample" else None

    # ---------------------------------------------------------------------------------- conditioning
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(encoder_hidden_states, class_labels) for the UNet, one row per prompt (each distinct prompt
        encoded once)."""
        unique = list(dict.fromkeys(prompts))
        enc = self.tokenizer(
            unique,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = enc.input_ids.to(self.clip.device)
        out = self.clip.text_model(input_ids=ids)  # causal mask: padding (EOS) never leaks into real tokens
        where = {p: i for i, p in enumerate(unique)}
        rows = torch.tensor([where[p] for p in prompts], device=ids.device)
        pooled = F.normalize(self.clip.text_projection(out.pooler_output), dim=-1)[rows]
        dtype = self.unet.dtype
        use_class = self.unet.config.class_embed_type is not None
        if self.config.conditioning == "text_tokens":
            hidden = out.last_hidden_state[rows]
        else:
            hidden = pooled[:, None, :]
        return hidden.to(dtype), (pooled.to(dtype) if use_class else None)

    # ------------------------------------------------------------------------------------ img2img
    @torch.no_grad()
    def sdedit(
        self,
        images: torch.Tensor,
        prompt: list[str],
        strength: float,
        num_inference_steps: int = 30,
        guidance_scale: float = 1.0,
        negative_prompt: list[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """img2img by SDEdit: noise ``images`` ([-1, 1], (B, 3, H, W), H and W multiples of 8) to ``strength``
        of the schedule, then denoise the remaining steps conditioned on ``prompt`` (one per image). Returns
        [-1, 1] images; ``strength`` so small that no step runs returns the input unchanged."""
        device, dtype = self._execution_device, self.unet.dtype
        x0 = images.to(device, dtype)
        sched = self.scheduler
        sched.set_timesteps(num_inference_steps, device=device)
        n_run = min(int(num_inference_steps * strength), num_inference_steps)
        if n_run < 1:
            return images
        start = (num_inference_steps - n_run) * getattr(sched, "order", 1)
        timesteps = sched.timesteps[start:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)
        x = sched.add_noise(x0, randn(x0.shape, generator=generator, device=device, dtype=dtype), timesteps[:1])
        do_cfg = guidance_scale > 1.0
        hidden, cls = self.encode_prompt(list(prompt))
        if do_cfg:
            u_hidden, u_cls = self.encode_prompt(list(negative_prompt or [""] * len(prompt)))
            hidden = torch.cat([u_hidden, hidden])
            cls = torch.cat([u_cls, cls]) if cls is not None else None
        step_kw = self._step_kwargs(generator)
        for t in timesteps:
            inp = sched.scale_model_input(torch.cat([x] * 2) if do_cfg else x, t)
            pred = self.unet(inp, t, encoder_hidden_states=hidden, class_labels=cls).sample
            if do_cfg:
                p_u, p_c = pred.chunk(2)
                pred = p_u + guidance_scale * (p_c - p_u)
            x = sched.step(pred, t, x, **step_kw).prev_sample
        return x.float().clamp(-1, 1)

    # ---------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULTS["num_inference_steps"],
        guidance_scale: float = DEFAULTS["guidance_scale"],
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        spatial_guidance_scale: float | None = None,
        spatial_guidance_end: float | None = None,
        spatial_guidance_every: int | None = None,
        init_image: Any = None,
        strength: float = 1.0,
        mask_image: Any = None,
    ):
        """``spatial_guidance_scale`` / ``_end`` / ``_every``: None = the pipeline's own (its config).

        ``init_image`` + ``strength``: SDEdit image-to-image (named so that curate's stage 2 keeps its own
        size-preserving ``PixelSDEdit``) (the image noised to the step ``strength`` of the way
        back, then denoised). ``mask_image`` (white = repaint): outside the mask every step is reset to the
        image noised to that step, and the result keeps the image there exactly (a masked SDEdit blend)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        n = len(prompts)
        if negative_prompt is None:
            negs = [""] * n
        else:
            negs = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negs) not in (1, n // num_images_per_prompt, n):
                raise ValueError(f"negative_prompt has {len(negs)} entries for {n // num_images_per_prompt} prompts")
            if len(negs) == 1:
                negs = negs * n
            elif len(negs) != n:
                negs = [p for p in negs for _ in range(num_images_per_prompt)]
        if isinstance(generator, list) and len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for {n} images — pass one per image")
        height = height or self.unet.config.sample_size
        width = width or self.unet.config.sample_size
        device, dtype = self._execution_device, self.unet.dtype
        do_cfg = guidance_scale > 1.0
        cb_names = callback_on_step_end_tensor_inputs or ["latents"]
        unknown = set(cb_names) - set(self._callback_tensor_inputs)
        if callback_on_step_end is not None and unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {sorted(unknown)} not in {self._callback_tensor_inputs}"
            )

        hidden, cls = self.encode_prompt(prompts)
        if do_cfg:
            u_hidden, u_cls = self.encode_prompt(negs)
            hidden = torch.cat([u_hidden, hidden])
            cls = torch.cat([u_cls, cls]) if cls is not None else None

        shape = (n, self.unet.config.in_channels, height, width)
        if latents is None:
            if isinstance(generator, list):  # image k depends on generator[k] alone (batch-invariant)
                latents = torch.cat(
                    [randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator]
                )
            else:
                latents = randn(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        init = mask = None
        if init_image is not None:
            if not 0.0 < strength <= 1.0:
                raise ValueError(f"strength must be in (0, 1], got {strength}")
            init = self._pixels(init_image, width, height, n, device, dtype) * 2 - 1
            start = min(len(timesteps) - 1, int(round(len(timesteps) * (1 - strength))))
            timesteps = timesteps[start:]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(start)
            noise = latents
            latents = self.scheduler.add_noise(init, noise, timesteps[:1])
            if mask_image is not None:
                mask = (self._pixels(mask_image, width, height, n, device, dtype)[:, :1] > 0.5).to(dtype)
        else:
            latents = latents * self.scheduler.init_noise_sigma
        sg = (
            self.config.get("spatial_guidance_scale", 0.0) if spatial_guidance_scale is None else spatial_guidance_scale
        )
        sg_end = self.config.get("spatial_guidance_end", 1.0) if spatial_guidance_end is None else spatial_guidance_end
        sg_every = (
            self.config.get("spatial_guidance_every", 1) if spatial_guidance_every is None else spatial_guidance_every
        )
        check_guidance(sg, sg_end, sg_every)
        rel_texts = self._relation_texts(prompts) if sg > 0 else None
        n_steps = len(timesteps)
        n_guided = min(n_steps - 1, math.ceil(sg_end * n_steps))  # never on the final image itself

        step_kw = self._step_kwargs(generator)
        self._interrupt = False  # a step-end callback sets it to stop early (as diffusers' pipelines do)
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self._interrupt:
                break
            if mask is not None and i > 0:  # outside the mask: the image, noised to this step
                latents = mask * latents + (1 - mask) * self.scheduler.add_noise(init, noise, t.reshape(1))
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            # the UNet predicts eps or v (the scheduler's prediction_type says which); guidance is linear in either
            pred = self.unet(model_in, t, encoder_hidden_states=hidden, class_labels=cls).sample
            if do_cfg:
                p_u, p_c = pred.chunk(2)
                pred = p_u + guidance_scale * (p_c - p_u)
            step = self.scheduler.step(pred, t, latents, return_dict=True, **step_kw)
            x_t, latents = latents, step.prev_sample
            # two-stage solvers (Heun, DPM2) call step twice per timestep: steer only the completed sample
            full_step = getattr(self.scheduler, "state_in_first_order", True)
            if rel_texts is not None and i < n_guided and i % sg_every == 0 and full_step:
                x0 = getattr(step, "pred_original_sample", None)
                if x0 is None:  # multistep solvers (DPM++, UniPC) do not report it
                    x0 = self._predicted_x0(x_t, pred, t)
                if x0 is not None:
                    latents = self._spatial_step(latents, x0, t, rel_texts, sg)
            if callback_on_step_end is not None:
                kw = {
                    "latents": latents,
                    "prompt_embeds": hidden,
                    "class_labels": cls,
                    "pred_original_sample": getattr(step, "pred_original_sample", None),
                }
                res = callback_on_step_end(self, i, t, {k: kw[k] for k in cb_names}) or {}
                latents = res.get("latents", latents)
                hidden = res.get("prompt_embeds", hidden)
                cls = res.get("class_labels", cls)
                if rel_texts is not None and latents.shape[0] != rel_texts[0].shape[0]:  # a callback dropped rows
                    m = latents.shape[0]  # (pruning: one prompt, so every row has the same relation)
                    rel_texts = (
                        (rel_texts[0][:m], rel_texts[1][:m], rel_texts[2][:m]) if len(set(prompts)) == 1 else None
                    )

        if mask is not None:
            latents = mask * latents + (1 - mask) * init
        images = (latents.float() / 2 + 0.5).clamp(0, 1)
        self.maybe_free_model_hooks()
        if output_type == "pt":
            out = images
        else:
            arr = images.permute(0, 2, 3, 1).cpu().numpy()
            out = arr if output_type == "np" else [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]
        if not return_dict:
            return (out,)
        return self._output(out)
