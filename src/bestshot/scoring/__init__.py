"""Scorers rank candidates: ``get_scorer(spec)`` is the factory, :class:`Scorer` the protocol.

Specs: ``"embedded"`` (the shipped CLIP), a transformers CLIP hub id or local folder
(default ``openai/clip-vit-large-patch14`` for hub models), or ``open_clip:MODEL[:PRETRAINED]``. A
transformers CLIP spec ending in ``+spatial`` (``embedded+spatial``) also checks the spatial relation a
prompt states (:mod:`bestshot.scoring.spatial`); any spec ending in ``+regions`` (``embedded+regions``)
also reads each object a prompt names where it is in a plain-background image (:mod:`bestshot.scoring.regions`).

``clip`` is the default CLIP (``embedded``). ``taste`` is the head learned from the user's curation
(``outputs/taste/head.json`` under the working folder; ``taste@PATH`` names the file, see
:mod:`bestshot.scoring.taste`). Public preference models: ``pickscore`` (or ``yuvalkirstain/PickScore_v1``),
``imagereward`` and ``hpsv2``, each also ``NAME@LOCAL_PATH`` (:mod:`bestshot.scoring.preference_models`).
Weighted sums: ``clip+taste:0.5`` — any term with ``:WEIGHT``, each term divided by its own saved scale
(:mod:`bestshot.scoring.ensemble`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import EMBEDDED, REGIONS, SPATIAL
from ..errors import BestshotError
from ..models.loader import CACHE, ModelCache, resolve_device
from .base import Scorer, clip_score_100
from .clip import CLIPScorer, OpenCLIPScorer
from .ensemble import EnsembleScorer, parse_ensemble
from .gate import Gate, cosine_like, resolve_gate, units_of
from .regions import RegionScorer, world_colours, world_nouns
from .spatial import SpatialScorer

__all__ = [
    "Scorer",
    "CLIPScorer",
    "EnsembleScorer",
    "OpenCLIPScorer",
    "SpatialScorer",
    "RegionScorer",
    "clip_score_100",
    "get_scorer",
    "pipeline_scorer",
    "scorer_from_pipeline",
    "Gate",
    "cosine_like",
    "resolve_gate",
    "units_of",
    "spec_range",
]


def get_scorer(
    spec: str | None = None,
    *,
    device: str | torch.device | None = None,
    half: bool | None = None,
    cache: ModelCache = CACHE,
) -> Scorer:
    """Build (or fetch from the model cache) the scorer named by ``spec``."""
    from ..models.registry import EMBEDDED_DIR

    spec = spec or EMBEDDED
    dev = resolve_device(str(device) if device is not None else None)
    half = dev.type == "cuda" if half is None else half
    key = ("scorer", spec, str(dev), half)
    if key in cache.scorers:
        return cache.scorers[key]
    terms = parse_ensemble(spec)
    if terms is not None:
        scorer: Any = EnsembleScorer(
            [get_scorer(t.spec, device=dev, half=half, cache=cache) for t in terms],
            [t.weight for t in terms],
            name=spec,
        )
        cache.scorers[key] = scorer
        return scorer
    if spec == "clip":
        return get_scorer(EMBEDDED, device=dev, half=half, cache=cache)
    if spec == "taste" or spec.startswith("taste@"):
        return _taste_scorer(spec, None, dev)  # not cached: the head file changes when retrained
    from .preference_models import load_preference_model

    pref = load_preference_model(spec, device=dev, half=half)
    if pref is not None:
        scorer = pref
    elif spec.endswith(REGIONS):
        inner = spec[: -len(REGIONS)]
        scorer = RegionScorer(
            get_scorer(inner, device=dev, half=half, cache=cache),
            **(dict(nouns=world_nouns(), colours=world_colours()) if inner == EMBEDDED else {}),
        )
    elif spec.endswith(SPATIAL):
        if spec.startswith("open_clip:"):
            raise BestshotError(f"{spec!r}: spatial scoring needs a transformers CLIP — drop '{SPATIAL}'")
        scorer = SpatialScorer(get_scorer(spec[: -len(SPATIAL)], device=dev, half=half, cache=cache))
    elif spec.startswith("open_clip:"):
        parts = spec.split(":")
        scorer = OpenCLIPScorer(parts[1], parts[2] if len(parts) > 2 else None, device=dev)
    else:
        source = str(EMBEDDED_DIR / "clip") if spec == EMBEDDED else spec
        dtype = torch.float16 if half else torch.float32
        scorer = CLIPScorer.from_pretrained(source, device=dev, dtype=dtype, name=spec)
        if spec == EMBEDDED:
            _own_gate(scorer, EMBEDDED)
    cache.scorers[key] = scorer
    return scorer


def spec_range(spec: str) -> tuple[float, float] | None:
    """The range of the scores ``spec`` names, without loading it (scoring.gate): a cosine's for CLIP-like
    specs (``+spatial`` included), at most 1 for ``+regions``, None for ensembles, ``taste`` and ImageReward."""
    if parse_ensemble(spec) is not None or spec.split("@", 1)[0] in ("taste", "imagereward"):
        return None
    from .gate import COSINE_RANGE

    return (float("-inf"), 1.0) if spec.endswith(REGIONS) else COSINE_RANGE


def pipeline_scorer(
    spec: str | None, pipe: Any, family: Any, device: str | torch.device | None = None, model: str | None = None
) -> Scorer:
    """The scorer of a run on ``pipe``: ``spec``, else the model family's default; the embedded model's
    own CLIP is reused (``embedded``, ``embedded+spatial`` or ``embedded+regions``) instead of loading a
    second copy, with the default gate of ``model``'s folder (its ``bestshot_defaults.json`` ``clip_min``)."""
    spec = spec or family.default_scorer
    terms = parse_ensemble(spec)
    if terms is not None:
        return EnsembleScorer(
            [pipeline_scorer(t.spec, pipe, family, device, model) for t in terms], [t.weight for t in terms], name=spec
        )
    if spec == "clip":
        spec = family.default_scorer
    if spec == "taste" or spec.startswith("taste@"):
        own = scorer_from_pipeline(pipe) if family.name == "embedded" else None
        return _taste_scorer(spec, own, resolve_device(str(device) if device is not None else None))
    if spec in (EMBEDDED, EMBEDDED + SPATIAL, EMBEDDED + REGIONS) and family.name == "embedded":
        own = scorer_from_pipeline(pipe)
        if own is not None:
            _own_gate(own, model or EMBEDDED)
            if spec.endswith(REGIONS):
                return RegionScorer(own, nouns=world_nouns(), colours=world_colours())
            if spec.endswith(SPATIAL):
                return SpatialScorer(own)
            return own
    return get_scorer(spec, device=resolve_device(str(device) if device is not None else None))


def _own_gate(scorer: Any, model: str) -> None:
    """A model's own CLIP gates at its folder's ``clip_min`` (a cosine of that CLIP; scoring.gate)."""
    from ..models.registry import model_defaults

    value = model_defaults(model).get("clip_min")
    if isinstance(value, (int, float)) and -1.0 <= value <= 1.0:
        scorer.default_min = float(value)


def scorer_from_pipeline(pipe: Any, name: str = EMBEDDED) -> CLIPScorer | None:
    """Reuse a pipeline's own CLIP (the embedded model carries one) instead of loading it twice."""
    clip = getattr(pipe, "clip", None)
    tok = getattr(pipe, "tokenizer", None)
    if clip is None or tok is None or not hasattr(clip, "get_image_features"):
        return None
    processor = getattr(pipe, "clip_processor", None)  # the torch-only pipeline brings its own (bestshot.models.lite)
    if processor is None:
        from .clip import _image_processor

        folder = getattr(getattr(clip, "config", None), "_name_or_path", None)
        processor = _image_processor(folder, clip.config.vision_config.image_size)
    return CLIPScorer(clip, tok, processor, name=name, device=clip.device, dtype=clip.dtype)


def _taste_scorer(spec: str, own_clip: Any, device: torch.device) -> Any:
    """``taste`` / ``taste@PATH``: the learned head on its embedder (the pipeline's own CLIP when it is the
    embedded one the head was trained on)."""
    from .taste import TasteHead, TasteScorer, default_head_path, embedder_for

    path = spec.split("@", 1)[1] if "@" in spec else str(default_head_path())
    head = TasteHead.load(path)
    embedder = own_clip if own_clip is not None and head.embedder == EMBEDDED else embedder_for(head.embedder, device)
    return TasteScorer(head, embedder, name=spec)
