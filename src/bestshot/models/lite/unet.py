"""diffusers' ``UNet2DConditionModel`` on torch alone, for the configurations the embedded model uses.

Blocks ``DownBlock2D`` / ``CrossAttnDownBlock2D`` / ``UNetMidBlock2DCrossAttn`` / ``CrossAttnUpBlock2D`` /
``UpBlock2D``, positional timestep embedding, an optional ``projection`` class embedding; the same
parameter names and operations as diffusers (SDPA attention, GEGLU feed-forward). A configuration outside
that raises :class:`Unsupported` (the loader then uses diffusers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# config keys whose value must be exactly this for the blocks below to be diffusers' computation
_REQUIRED = {
    "addition_embed_type": None,
    "center_input_sample": False,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_norm": None,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "num_class_embeds": None,
    "only_cross_attention": False,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "reverse_transformer_layers_per_block": None,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 1,
    "upcast_attention": False,
    "attention_type": "default",
    "act_fn": "silu",
}
_BLOCKS = {"DownBlock2D", "CrossAttnDownBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"}


class Unsupported(ValueError):
    """A UNet configuration these modules do not rebuild."""


class Config(dict):
    """A diffusers ``FrozenDict``-like config: keys as attributes too."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class UNetOutput:
    sample: torch.Tensor


def check(config: dict[str, Any]) -> None:
    for key, want in _REQUIRED.items():
        if config.get(key, want) != want:
            raise Unsupported(f"{key}={config.get(key)!r}")
    if config.get("class_embed_type") not in (None, "projection"):
        raise Unsupported(f"class_embed_type={config.get('class_embed_type')!r}")
    blocks = set(config["down_block_types"]) | set(config["up_block_types"])
    if not blocks <= _BLOCKS or not isinstance(config.get("attention_head_dim"), int):
        raise Unsupported(
            f"blocks {sorted(blocks - _BLOCKS)} / attention_head_dim {config.get('attention_head_dim')!r}"
        )
    if config.get("num_attention_heads") is not None and not isinstance(config["num_attention_heads"], int):
        raise Unsupported("per-block num_attention_heads")


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float, max_period: int = 10000):
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32, device=t.device)
    exponent = exponent / (half - shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = 1 * emb
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return F.pad(emb, (0, 1, 0, 0)) if dim % 2 == 1 else emb


class TimestepEmbedding(nn.Module):
    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1, self.act, self.linear_2 = nn.Linear(cin, dim), nn.SiLU(), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float, scale: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps, affine=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.scale = scale

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.nonlinearity(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.scale


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        d = k.shape[-1] // self.heads
        q, k, v = (t.view(b, -1, self.heads, d).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, self.heads * d).to(q.dtype)
        return self.to_out[0](out) / 1.0


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * 4), nn.Dropout(0.0), nn.Linear(dim * 4, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.net:
            x = m(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    def __init__(self, channels: int, heads: int, context_dim: int, groups: int, linear: bool):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, channels // heads, context_dim)]
        )
        self.proj_out = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        c = x.shape[1]
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if self.linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        if not self.linear:
            x = self.proj_out(x)
        return x + residual


class Sampler(nn.Module):
    """``Downsample2D`` (a stride-2 conv) or ``Upsample2D`` (nearest x2, then a conv)."""

    def __init__(self, channels: int, down: bool):
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if down else 1, padding=1)

    def forward(self, x: torch.Tensor, size: Any = None) -> torch.Tensor:
        if not self.down:
            if x.shape[0] >= 64:
                x = x.contiguous()
            x = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else F.interpolate(x, size=size)
        return self.conv(x)


class Block(nn.Module):
    """A down or up block: resnets, each followed by a transformer when ``attn``, then a resampler."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None, sampler: Sampler | None, up: bool):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.up = up
        if sampler is not None:
            setattr(self, "upsamplers" if up else "downsamplers", nn.ModuleList([sampler]))

    @property
    def sampler(self) -> Sampler | None:
        samplers = getattr(self, "upsamplers" if self.up else "downsamplers", None)
        return samplers[0] if samplers is not None else None

    def forward(self, x, temb, context, skips=None, size=None):
        states = ()
        for i, resnet in enumerate(self.resnets):
            if self.up:
                x = torch.cat([x, skips[-1]], dim=1)
                skips = skips[:-1]
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            states += (x,)
        if self.sampler is not None:
            x = self.sampler(x, size) if self.up else self.sampler(x)
            states += (x,)
        return x, states


class MidBlock(nn.Module):
    def __init__(self, resnets: list[nn.Module], attention: nn.Module):
        super().__init__()
        self.resnets, self.attentions = nn.ModuleList(resnets), nn.ModuleList([attention])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class LiteUNet(nn.Module):
    """``UNet2DConditionModel`` (see the module doc); ``unet(sample, t, encoder_hidden_states=, class_labels=)``."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        check(config)
        self.config = Config(config)
        c = self.config
        ch, groups, eps, ctx = list(c.block_out_channels), c.norm_num_groups, c.norm_eps, c.cross_attention_dim
        heads, linear, n = (
            c.get("num_attention_heads") or c.attention_head_dim,
            c.use_linear_projection,
            c.layers_per_block,
        )
        temb = ch[0] * 4
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.class_embedding = (
            TimestepEmbedding(c.projection_class_embeddings_input_dim, temb) if c.class_embed_type else None
        )

        def resnet(cin, cout, scale=1.0):
            return ResnetBlock2D(cin, cout, temb, groups, eps, scale)

        def attn(channels):
            return Transformer2DModel(channels, heads, ctx, groups, linear)

        downs, cout = [], ch[0]
        for i, kind in enumerate(c.down_block_types):
            cin, cout = cout, ch[i]
            final = i == len(ch) - 1
            rs = [resnet(cin if j == 0 else cout, cout) for j in range(n)]
            ats = [attn(cout) for _ in range(n)] if kind.startswith("CrossAttn") else None
            downs.append(Block(rs, ats, None if final else Sampler(cout, down=True), up=False))
        self.down_blocks = nn.ModuleList(downs)
        scale = c.get("mid_block_scale_factor", 1)
        self.mid_block = MidBlock([resnet(ch[-1], ch[-1], scale), resnet(ch[-1], ch[-1], scale)], attn(ch[-1]))
        ups, rev, cout = [], ch[::-1], ch[-1]
        for i, kind in enumerate(c.up_block_types):
            prev, cout, cin = cout, rev[i], rev[min(i + 1, len(ch) - 1)]
            final = i == len(ch) - 1
            rs = [resnet((prev if j == 0 else cout) + (cin if j == n else cout), cout) for j in range(n + 1)]
            ats = [attn(cout) for _ in range(n + 1)] if kind.startswith("CrossAttn") else None
            ups.append(Block(rs, ats, None if final else Sampler(cout, down=False), up=True))
        self.up_blocks = nn.ModuleList(ups)
        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], c.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def forward(self, sample, timestep, encoder_hidden_states, class_labels=None, return_dict: bool = True):
        factor = 2 ** sum(b.sampler is not None for b in self.up_blocks)
        forward_size = any(d % factor for d in sample.shape[-2:])
        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.float64 if isinstance(t, float) else torch.int64, device=sample.device)
        elif t.dim() == 0:
            t = t[None].to(sample.device)
        t = t.expand(sample.shape[0])
        t_emb = timestep_embedding(t, self.conv_in.out_channels, self.config.flip_sin_to_cos, self.config.freq_shift)
        emb = self.time_embedding(t_emb.to(dtype=sample.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when num_class_embeds > 0")
            emb = emb + self.class_embedding(class_labels).to(dtype=sample.dtype)
        ctx = encoder_hidden_states
        x = self.conv_in(sample)
        skips = (x,)
        for block in self.down_blocks:
            x, states = block(x, emb, ctx)
            skips += states
        x = self.mid_block(x, emb, ctx)
        for i, block in enumerate(self.up_blocks):
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            size = skips[-1].shape[2:] if forward_size and i < len(self.up_blocks) - 1 else None
            x, _ = block(x, emb, ctx, res, size)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return UNetOutput(x) if return_dict else (x,)
