"""Which CLIP a cache or a captioner was made with: a hash of the scorer's text tower.

Shared by the interrogator (its term-bank caches) and the captioner (the CLIP it was trained on), so
neither needs the other to compute it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def model_fingerprint(scorer: Any) -> str:
    """A hash of the CLIP text tower: its config and a sample of every parameter.

    Why not the name: ``embedded`` is retrained in place, and a stale cache would silently rank with
    another model's embeddings. Sampling (first 1024 values of each tensor) keeps this fast for ViT-L.
    """
    h = hashlib.sha256()
    model = scorer.model
    cfg = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    named = getattr(model, "text_model", model).named_parameters()
    extra = [("text_projection", model.text_projection.weight)] if hasattr(model, "text_projection") else []
    for name, p in list(named) + extra:
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(p.detach().reshape(-1)[:1024].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
