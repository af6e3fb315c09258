"""Region-steered sampling: each object of a layout drawn from its own phrase inside its box.

``ImgCfg.regions`` (``--regions auto|off|FILE``, or a layout dict from Python / HTTP) names a
:class:`~bestshot.layout.Layout` (``auto``: :func:`bestshot.prompts.layout.resolve_layout` plans it — the
embedded world's grammar first, an LLM only where one is available; a file: ``layout.json``). While a
text-to-image batch is drawn, every cross-attention layer of the UNet reads, at each query pixel, the tokens
of the region the pixel lies in: a box's pixels attend to its object's phrase, pixels outside every box to the
full prompt as the pipeline encoded it (weighting, LoRA, embeddings and clip skip included).

Mechanism — regional cross-attention, not MultiDiffusion. Blending noise predictions by region masks
(MultiDiffusion) costs one UNet pass per region per step: 3× the UNet for two objects, beyond the ≤ 2× best-of-8
budget of the composition goal. Masking cross-attention costs only extra cross-attention calls (the convolutions,
self-attention and feed-forwards run once). It is computed as one attention call per region on the
conditioned rows, each over its own phrase's tokens, blended per query pixel by the region weights::

    out(p) = w_bg(p) · attn(q_p, prompt) + Σ_k w_k(p) · attn(q_p, phrase_k)

which for hard, disjoint boxes is exactly attention over the concatenated tokens with each pixel masked to its
region's tokens — without padding every phrase to one length, with soft weights at box edges (a cell's weight
is the fraction of it the box covers, at each attention resolution: the embedded model's 8×8 and 4×4 grids are
coarse), overlapping boxes averaged, and the identity this module is tested on: one box over the whole image
with the full prompt gives ``w = 1`` everywhere and computes the very same attention, so the image is bit-equal
to a draw without regions. The blend happens after the layer's output projection, which is affine, so the
original processor of each layer (SDPA, xformers, anything set on the UNet) is reused unchanged.

Only the conditioned half of a classifier-free-guidance batch is steered (``guidance > 1``: diffusers and the
embedded model put the negative prompt first); the negative prompt stays global. Global conditioning stays the
full prompt's: SDXL's pooled text embeds and time ids, and the embedded model's pooled-text class embedding
(added to the timestep embedding of every resnet, it carries the whole scene — objects, colours and relation —
and has no spatial extent to split). The embedded model's spatial guidance (a CLIP-gradient nudge of the
predicted image, outside the UNet) composes unchanged: both can be on.

Hooks: diffusers UNets (SD 1.x/2.x, SDXL, ``BestshotWorldPipeline`` under ``BESTSHOT_LITE=0``) get a wrapping
processor on every ``attn2`` through ``unet.set_attn_processor``; the torch-only ``LiteUNet`` gets each
``attn2`` module wrapped. A forward pre-hook on the UNet reads the input's size so every layer knows its grid.
:func:`prepared` (a draw hook of :data:`bestshot.generation.CONDITIONING`) undoes all of it on exit.

Cost: per cross-attention layer, one extra attention (with its q/k/v/out projections) per region on half the
batch; on the embedded model about 1.2-1.4× the UNet time for two regions. Text-to-image only: img2img,
inpainting, early pruning, ControlNet and IP-Adapter are refused by ``ImgCfg.validate``; a hires pass runs
inside the same hook on the same UNet (steered too), an SDXL refiner's UNet is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import BestshotError
from ..layout import Layout, layout_from_dict, read_layout
from .attention import has_syntax, plain

FAMILIES = ("sd15", "sdxl", "embedded")  # model families whose UNet this module steers
Attend = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------- the layout
PLANNED_MAX = 256  # layouts the model cache keeps (auto plans each prompt once; a server sees many prompts)


def _user_prompt(cfg: Any, prompt: str) -> str:
    """The words to plan from: the prompt without the run's style suffix and A1111 weight syntax."""
    suffix = (getattr(cfg, "style_suffix", "") or "").strip()
    if suffix and prompt.rstrip().endswith(suffix):
        prompt = prompt.rstrip()[: -len(suffix)].rstrip(" ,")
    return plain(prompt) if has_syntax(prompt) else prompt


def layout_for(cfg: Any, prompt: str) -> Layout | None:
    """The layout ``cfg.regions`` asks for on ``prompt``: None when off; an empty layout (``reason`` says why)
    when ``auto`` found none; a file's or a dict's layout as given."""
    setting = getattr(cfg, "regions", "off")
    if setting in (None, "off"):
        return None
    if isinstance(setting, dict):
        return layout_from_dict(setting, "regions")
    if setting != "auto":
        return read_layout(setting)  # a file: read at each draw (cheap), so an edited file is seen
    from ..models.loader import CACHE

    text = _user_prompt(cfg, prompt)
    planned = CACHE.layouts
    if text not in planned:
        from .layout import resolve_layout

        planned[text] = resolve_layout(setting, text) if text.strip() else Layout(source="none", reason="empty prompt")
        if len(planned) > PLANNED_MAX:
            planned.pop(next(iter(planned)))
    return planned[text]


def record(cfg: Any, prompt: str) -> dict[str, Any]:
    """The run record's ``regions`` entry: the layout used (objects, boxes, source) or why none; {} when off."""
    setting = getattr(cfg, "regions", "off")
    if setting in (None, "off"):
        return {}
    layout = layout_for(cfg, prompt)
    asked = "inline" if isinstance(setting, dict) else setting
    if not layout:
        why = layout.reason if layout is not None and layout.reason else "the layout has no objects"
        return {"regions": {"setting": asked, "used": False, "note": f"plain sampling: {why}"}}
    d = layout.to_dict()
    return {
        "regions": {
            "setting": asked,
            "used": True,
            "source": layout.source,
            "objects": d["objects"],
            "background": "the full prompt (outside every box)",
            "reason": layout.reason,
        }
    }


# ------------------------------------------------------------------------------------------- the weights
def coverage(boxes: Sequence[tuple[float, float, float, float]], h: int, w: int) -> torch.Tensor:
    """(R, h·w) float64: the fraction of each grid cell that each box covers (1 where it covers all of it)."""
    ys = torch.arange(h, dtype=torch.float64)
    xs = torch.arange(w, dtype=torch.float64)
    out = []
    for x0, y0, x1, y1 in boxes:
        fy = (torch.minimum(ys + 1, torch.tensor(y1 * h)) - torch.maximum(ys, torch.tensor(y0 * h))).clamp(0, 1)
        fx = (torch.minimum(xs + 1, torch.tensor(x1 * w)) - torch.maximum(xs, torch.tensor(x0 * w))).clamp(0, 1)
        c = fy[:, None] * fx[None, :]
        out.append(torch.where(c > 1 - 1e-9, torch.ones_like(c), c).reshape(-1))
    return torch.stack(out)


def weights(boxes: Sequence[tuple[float, float, float, float]], h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(background (h·w,), regions (R, h·w)): per cell, the share of the full prompt and of each region's phrase.
    Overlapping boxes share a cell in proportion to their cover; the shares always sum to 1."""
    cov = coverage(boxes, h, w)
    total = cov.sum(0)
    regions = torch.where(total > 1, cov / total.clamp(min=1e-12), cov)
    background = (1 - regions.sum(0)).clamp(min=0)
    background = torch.where(background < 1e-9, torch.zeros_like(background), background)
    return background, regions


def grid(size: tuple[int, int], n: int) -> tuple[int, int] | None:
    """The (h, w) of a UNet level with ``n`` cells whose input is ``size`` (each level halves, rounding up)."""
    h, w = size
    for _ in range(8):
        if h * w == n:
            return h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return None


@dataclass
class Regions:
    """What every hooked attention layer of one draw shares: the boxes, each phrase's tokens, the UNet input's
    size (read at each forward) and whether the batch is [negative; positive] (classifier-free guidance)."""

    boxes: list[tuple[float, float, float, float]]
    embeds: list[torch.Tensor]  # (1, tokens, dim) per box
    guided: bool
    size: tuple[int, int] | None = None
    _cache: dict[tuple[int, int, str, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def _weights(self, n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        hw = grid(self.size, n) if self.size is not None else None
        if hw is None:
            return None
        key = (*hw, str(like.device), str(like.dtype))
        if key not in self._cache:
            bg, reg = weights(self.boxes, *hw)
            self._cache[key] = (bg.to(like.device, like.dtype)[None, :, None], reg.to(like.device, like.dtype))
        return self._cache[key]

    def blend(self, attend: Attend, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """The layer's output with each region's query pixels attending to that region's phrase."""
        out = attend(x, context)
        if context is None or x.dim() != 3:  # self-attention, or a layout this hook does not know
            return out
        b = x.shape[0]
        if self.guided and b % 2:
            return out
        lo = b // 2 if self.guided else 0
        got = self._weights(x.shape[1], out)
        if got is None:
            return out
        bg, reg = got
        xc = x[lo:]
        mixed = out[lo:] * bg
        for k, emb in enumerate(self.embeds):
            ctx = emb.to(context.device, context.dtype).expand(xc.shape[0], -1, -1)
            mixed = mixed + attend(xc, ctx) * reg[k][None, :, None]
        return torch.cat([out[:lo], mixed]) if lo else mixed


class RegionProcessor:
    """A diffusers attention processor: the layer's own processor, blended by region (see :class:`Regions`)."""

    def __init__(self, inner: Any, regions: Regions) -> None:
        self.inner, self.regions = inner, regions

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None, **kw):
        def attend(x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
            mask = attention_mask if ctx is encoder_hidden_states else None
            return self.inner(attn, x, encoder_hidden_states=ctx, attention_mask=mask, **kw)

        return self.regions.blend(attend, hidden_states, encoder_hidden_states)


class LiteRegionAttention(nn.Module):
    """A ``LiteUNet`` cross-attention module, blended by region (see :class:`Regions`)."""

    def __init__(self, inner: nn.Module, regions: Regions) -> None:
        super().__init__()
        self.inner, self.regions = inner, regions

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.regions.blend(self.inner, x, context)


# ------------------------------------------------------------------------------------------- the phrases
@torch.no_grad()
def encode(pipe: Any, cfg: Any, phrases: Sequence[str]) -> list[torch.Tensor]:
    """Each phrase's token states, (1, tokens, dim), encoded as the pipeline encodes its prompt."""
    from ..models.world_sampling import WorldSampling

    if isinstance(pipe, WorldSampling):  # the embedded model (lite or diffusers): its text tokens
        hidden, _ = pipe.encode_prompt(list(phrases))
        return [hidden[i : i + 1] for i in range(len(phrases))]
    from . import weighting

    clip_skip = int(getattr(cfg, "clip_skip", 1) or 1)
    literal = not getattr(cfg, "prompt_weighting", True)
    out = []
    for text in phrases:
        if weighting._encoders(pipe) and (clip_skip > 1 or (not literal and weighting.needs_embeds(pipe, text, ""))):
            out.append(weighting.encode(pipe, text, clip_skip, literal)[0])
        elif hasattr(pipe, "encode_prompt"):
            device = getattr(pipe, "_execution_device", None) or pipe.device
            kw = dict(device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
            out.append(pipe.encode_prompt(prompt=text, **kw)[0])
        else:
            raise BestshotError(f"--regions needs a pipeline that encodes prompts; {type(pipe).__name__} does not")
    return out


def _guided(pipe: Any, cfg: Any) -> bool:
    unet = pipe.unet
    return float(cfg.guidance) > 1 and getattr(unet.config, "time_cond_proj_dim", None) is None


# ----------------------------------------------------------------------------------------------- the hook
@contextmanager
def prepared(pipe: Any, cfg: Any, prompt: str, negative: str, seeds: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The draw with every cross-attention layer steered by ``cfg.regions``'s layout; no extra kwargs. Off,
    or no layout: nothing changes. Every processor, module and hook is restored on exit, even on error."""
    layout = layout_for(cfg, prompt)
    unet = getattr(pipe, "unet", None)
    if not layout:
        yield {}
        return
    if unet is None:
        raise BestshotError(f"--regions needs a UNet pipeline; {type(pipe).__name__} has none — use --regions off")
    regions = Regions([o.box for o in layout.objects], encode(pipe, cfg, [o.phrase for o in layout.objects]),
                      _guided(pipe, cfg))  # fmt: skip

    def read_size(module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        regions.size = tuple(sample.shape[-2:])

    handle = unet.register_forward_pre_hook(read_size, with_kwargs=True)
    swapped: list[tuple[nn.Module, nn.Module]] = []
    originals = None
    try:
        if hasattr(unet, "set_attn_processor"):
            originals = dict(unet.attn_processors)
            unet.set_attn_processor(
                {k: RegionProcessor(p, regions) if k.endswith("attn2.processor") else p for k, p in originals.items()}
            )
        else:
            for block in [m for m in unet.modules() if isinstance(getattr(m, "attn2", None), nn.Module)]:
                swapped.append((block, block.attn2))
                block.attn2 = LiteRegionAttention(block.attn2, regions)
        yield {}
    finally:
        handle.remove()
        for block, inner in swapped:
            block.attn2 = inner
        if originals is not None:
            unet.set_attn_processor(originals)
