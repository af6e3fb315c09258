"""The prompting hooks of one draw, in order: LoRAs (:mod:`bestshot.models.lora`), textual-inversion embeddings
(:mod:`bestshot.models.embeddings`), then prompt weighting / long prompts / clip skip
(:mod:`bestshot.prompts.weighting`, which encodes with the LoRA'd, embedding-aware text encoder).

One ``with prepared(pipe, cfg, prompt, negative, seeds) as extra: kwargs.update(extra)`` wherever a batch is
drawn; every change to ``pipe`` is undone on exit, in reverse order, even on error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from ..models import embeddings, lora
from . import weighting

FEATURES = (lora, embeddings, weighting)


@contextmanager
def prepared(pipe: Any, cfg: Any, prompt: str, negative: str, seeds: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The pipeline keyword arguments the features add or override, with ``pipe`` prepared for them."""
    extra: dict[str, Any] = {}
    with ExitStack() as undo:
        for feature in FEATURES:
            extra.update(undo.enter_context(feature.prepared(pipe, cfg, prompt, negative or "", seeds)))
        yield extra
