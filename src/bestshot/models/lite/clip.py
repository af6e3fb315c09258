"""transformers' ``CLIPModel`` (text and vision towers, projections) and ``CLIPImageProcessor`` on torch alone.

Same parameter names as transformers (``text_model.encoder.layers.0.self_attn.q_proj.weight``, ...), same
operations: SDPA attention with transformers' masks (causal, plus padding when a mask has zeros), the
text pooled at the first end-of-text token, the vision pooled at the class token.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _ns(d: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(**{k: _ns(v) if isinstance(v, dict) else v for k, v in d.items()})


@dataclass
class TowerOutput:
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


def _act(name: str):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    raise ValueError(f"unsupported CLIP activation {name!r}")


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        shape = (*x.shape[:-1], -1, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=causal, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1).contiguous())


class MLP(nn.Module):
    def __init__(self, cfg: SimpleNamespace):
        super().__init__()
        self.act = _act(cfg.hidden_act)
        self.fc1, self.fc2 = (
            nn.Linear(cfg.hidden_size, cfg.intermediate_size),
            nn.Linear(cfg.intermediate_size, cfg.hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: SimpleNamespace):
        super().__init__()
        self.self_attn = Attention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask, causal)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, cfg: SimpleNamespace):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x, mask=None, causal=False, keep_all=False) -> tuple[torch.Tensor, tuple | None]:
        states = [x]
        for layer in self.layers:
            x = layer(x, mask, causal)
            states.append(x)
        return x, tuple(states) if keep_all else None


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: SimpleNamespace):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.register_buffer(
            "position_ids", torch.arange(cfg.max_position_embeddings).expand((1, -1)), persistent=False
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_ids[:, : input_ids.shape[-1]]
        return self.token_embedding(input_ids) + self.position_embedding(pos)


class TextTransformer(nn.Module):
    def __init__(self, cfg: SimpleNamespace):
        super().__init__()
        self.config = cfg
        self.embeddings = TextEmbeddings(cfg)
        self.encoder = Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.eos_token_id = cfg.eos_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TowerOutput:
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        x = self.embeddings(input_ids)
        n = x.shape[1]
        mask, causal = None, n > 1
        if attention_mask is not None and not bool(attention_mask.all()):  # transformers: causal AND padding
            tri = torch.arange(n, device=x.device)[:, None] >= torch.arange(n, device=x.device)[None, :]
            mask, causal = tri[None, None] & attention_mask.bool().to(x.device)[:, None, None, :], False
        x, _ = self.encoder(x, mask, causal)
        x = self.final_layer_norm(x)
        ids = input_ids.to(dtype=torch.int, device=x.device)
        at = ids.argmax(dim=-1) if self.eos_token_id == 2 else (ids == self.eos_token_id).int().argmax(dim=-1)
        return TowerOutput(x, x[torch.arange(x.shape[0], device=x.device), at])


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: SimpleNamespace):
        super().__init__()
        self.image_size = cfg.image_size
        self.class_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        positions = (cfg.image_size // cfg.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(positions, cfg.hidden_size)
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixel_values.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"Input image size ({h}*{w}) doesn't match model ({self.image_size}*{self.image_size}).")
        patches = self.patch_embedding(pixel_values.to(dtype=self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(b, 1, -1), patches], dim=1)
        return x + self.position_embedding(self.position_ids)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: SimpleNamespace):
        super().__init__()
        self.config = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> TowerOutput:
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        x, states = self.encoder(x, keep_all=output_hidden_states)
        return TowerOutput(x, self.post_layernorm(x[:, 0, :]), states)

    def before_last_layer(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``hidden_states[-2]`` of :meth:`forward` (the last layer's input) without running the last layer."""
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.encoder.layers[:-1]:
            x = layer(x)
        return x


class LiteCLIP(nn.Module):
    """``transformers.CLIPModel`` for inference (the attributes bestshot reads: ``text_model``, ``vision_model``,
    ``text_projection``, ``visual_projection``, ``get_text_features``, ``get_image_features``, ``config``)."""

    def __init__(self, config: dict[str, Any], name_or_path: str = ""):
        super().__init__()
        self.config = _ns({k: v for k, v in config.items() if k not in ("text_config", "vision_config")})
        self.config.text_config, self.config.vision_config = _ns(config["text_config"]), _ns(config["vision_config"])
        self.config._name_or_path = name_or_path
        for tower in (self.config.text_config, self.config.vision_config):
            _act(tower.hidden_act)  # an unsupported activation fails here, at load
        self.text_model = TextTransformer(self.config.text_config)
        self.vision_model = VisionTransformer(self.config.vision_config)
        dim = config["projection_dim"]
        self.visual_projection = nn.Linear(self.config.vision_config.hidden_size, dim, bias=False)
        self.text_projection = nn.Linear(self.config.text_config.hidden_size, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.get("logit_scale_init_value", 2.6592))))

    @property
    def dtype(self) -> torch.dtype:
        return self.text_projection.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_projection.weight.device

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_projection(self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


class ImageProcessor:
    """transformers' ``CLIPImageProcessorPil`` as the embedded folder configures it: RGB, bicubic resize of the
    short side, centre crop, rescale to [0, 1], normalise; ``processor(images=..., return_tensors="pt")``."""

    def __init__(self, cfg: dict[str, Any]):
        size, crop = cfg.get("size", {}), cfg.get("crop_size", {})
        self.short = int(size.get("shortest_edge", 224))
        self.crop = (int(crop.get("height", self.short)), int(crop.get("width", self.short)))
        self.resample = int(cfg.get("resample", 3))
        self.scale = float(cfg.get("rescale_factor", 1 / 255))
        self.mean = np.array(cfg.get("image_mean", [0.48145466, 0.4578275, 0.40821073]), dtype=np.float32)
        self.std = np.array(cfg.get("image_std", [0.26862954, 0.26130258, 0.27577711]), dtype=np.float32)

    def _one(self, im) -> np.ndarray:
        im = im.convert("RGB")
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.short * long / short)
        size = (self.short, new_long) if w <= h else (new_long, self.short)
        if size != (w, h):
            im = im.resize(size, resample=self.resample)
        w, h = im.size
        ch, cw = self.crop
        top, left = (h - ch) // 2, (w - cw) // 2
        arr = (np.asarray(im)[top : top + ch, left : left + cw].astype(np.float64) * self.scale).astype(np.float32)
        return ((arr - self.mean) / self.std).transpose(2, 0, 1)

    def __call__(self, images, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        ims = images if isinstance(images, (list, tuple)) else [images]
        return {"pixel_values": torch.from_numpy(np.stack([self._one(im) for im in ims]))}
