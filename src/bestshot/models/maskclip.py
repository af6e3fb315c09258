"""MaskCLIP: where a CLIP ViT sees each object of "A <relation> B", and whether the relation holds.

Zhou, Loy and Dai, "Extract Free Dense Labels from CLIP" (ECCV 2022): the last attention layer's *value*
path, projected like the pooled token, gives every patch an embedding in the joint space. Comparing each
patch with the texts of A and of B locates both objects (softmax-weighted centroids); their displacement
says whether the relation holds. Plain tensor functions of a transformers ``CLIPModel``, used by the
relation-aware scorer (:mod:`bestshot.scoring.spatial`), by the embedded pipeline's spatial guidance
(:mod:`bestshot.models.world_pipeline`) and by the interrogator.

Prompts are parsed generically ("<A> [to the] left of|right of|above|below|under|beneath <B>[, ...]
[on ... background]").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import BestshotError

# phrase → canonical relation ("A <relation> B")
RELATION_PHRASES: dict[str, str] = {
    "to the left of": "left of",
    "left of": "left of",
    "to the right of": "right of",
    "right of": "right of",
    "above": "above",
    "over": "above",
    "below": "below",
    "under": "below",
    "beneath": "below",
}
_REL_RE = re.compile(
    r"\b(" + "|".join(sorted((re.escape(p) for p in RELATION_PHRASES), key=len, reverse=True)) + r")\b"
)
_TAIL_RE = re.compile(r"\s+(?:on|against|in front of)\s+(?:an?\s+)?[\w-]+(?:\s+background)?\s*$")
_LEAD_RE = re.compile(r"^(?:a picture of|an image of|a drawing of|a photo of)\s+")


@dataclass(frozen=True)
class Relation:
    a: str  # the object phrase before the relation ("a small red circle")
    relation: str  # left of | right of | above | below
    b: str  # the object phrase after it


def parse_relation(prompt: str) -> Relation | None:
    """The one spatial relation between two object phrases in the first clause of ``prompt``, or None.

    >>> parse_relation("a red circle to the left of a blue square on a white background")
    Relation(a='a red circle', relation='left of', b='a blue square')
    """
    clause = prompt.strip().lower().split(",")[0].split(";")[0]
    hits = list(_REL_RE.finditer(clause))
    if len(hits) != 1:  # none, or several (ambiguous: leave them to the plain cosine)
        return None
    m = hits[0]
    a = _LEAD_RE.sub("", clause[: m.start()].strip())
    b = _TAIL_RE.sub("", clause[m.end() :].strip()).strip()
    if not a or not b or " and " in a or " and " in b:
        return None
    return Relation(a, RELATION_PHRASES[m.group(1)], b)


def _vision_parts(model: Any):
    vm = getattr(model, "vision_model", None)
    layers = getattr(getattr(vm, "encoder", None), "layers", None)
    if vm is None or not layers or not hasattr(layers[-1], "self_attn") or not hasattr(model, "visual_projection"):
        raise BestshotError(
            f"{type(model).__name__} has no ViT vision tower — spatial scoring needs a transformers "
            "CLIPModel (drop '+spatial' from the scorer)"
        )
    return vm, layers[-1]


def image_features(model: Any, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled (B, D), dense (B, N, D))``, both L2-normalised, from one pass of the vision tower.

    ``dense`` is MaskCLIP's: the last layer's value projection of every patch token (no query-key mixing,
    no residual, no MLP), then the tower's final norm and the visual projection, as the pooled token gets.
    """
    vm, last = _vision_parts(model)
    out = vm(pixel_values=pixel_values, output_hidden_states=True)
    pooled = model.visual_projection(out.pooler_output)
    return F.normalize(pooled.float(), dim=-1), _dense(model, out.hidden_states[-2])


def dense_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """``dense`` of :func:`image_features` alone. A tower that can stop before its last layer (the torch-only
    CLIP of :mod:`bestshot.models.lite`) skips that layer's attention and MLP and the pooled token, which
    ``dense`` does not read: the same operations on the same inputs, so the same values, bit for bit."""
    vm, _ = _vision_parts(model)
    before_last = getattr(vm, "before_last_layer", None)
    if before_last is not None:
        return _dense(model, before_last(pixel_values))
    return _dense(model, vm(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2])


def _dense(model: Any, h: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's patch embeddings from the last layer's input ``h``."""
    vm, last = _vision_parts(model)
    v = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(h)))[:, 1:]  # drop the class token
    return F.normalize(model.visual_projection(vm.post_layernorm(v)).float(), dim=-1)


def centroids(
    dense: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor, temperature: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where A and B are: ``(B, 2)`` (x, y) centroids in [0, 1] image coordinates (y down).

    ``dense``: (B, N, D) patch embeddings on a square grid; ``ta``/``tb``: (B, D) or (D,) text embeddings.
    A's weight on a patch is softmax(temperature * (cos(patch, A) - cos(patch, B))), B's the reverse.
    """
    n = dense.shape[1]
    g = int(round(n**0.5))
    if g * g != n:
        raise BestshotError(f"spatial scoring needs a square patch grid, got {n} patches")
    coords = (torch.arange(g, dtype=torch.float32, device=dense.device) + 0.5) / g
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)  # (N, 2)
    ta, tb = ta.expand(dense.shape[0], -1), tb.expand(dense.shape[0], -1)
    # products written as multiply-and-sum, not einsum/matmul: a row's sum is then the same at any batch
    # size (BLAS rounds a 1-row product differently from a blocked one; see models.batch_invariance)
    diff = (dense * ta[:, None, :]).sum(-1) - (dense * tb[:, None, :]).sum(-1)
    wa, wb = torch.softmax(temperature * diff, 1), torch.softmax(-temperature * diff, 1)
    return (wa[..., None] * grid).sum(1), (wb[..., None] * grid).sum(1)


def agreement(ca: torch.Tensor, cb: torch.Tensor, relation: str, gain: float = 5.0) -> torch.Tensor:
    """How well "A <relation> B" fits centroids ``ca``/``cb``: tanh(gain * (along - |across|)) in (-1, 1).

    ``along`` is B's displacement from A in the relation's direction, ``across`` the one perpendicular to
    it: positive when the pair sits within 45 degrees of the stated direction (as the world's oracle asks).
    """
    dx, dy = (cb - ca).unbind(-1)
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return torch.tanh(gain * (along - across.abs()))


def read_relation(ca: torch.Tensor, cb: torch.Tensor) -> list[str]:
    """The relation of A to B that the centroids show, one per row: the dominant axis, then its sign."""
    out = []
    for dx, dy in (cb - ca).tolist():
        if abs(dx) >= abs(dy):
            out.append("left of" if dx > 0 else "right of")
        else:
            out.append("above" if dy > 0 else "below")
    return out
