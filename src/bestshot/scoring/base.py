"""The scorer API every ranking in bestshot goes through.

A scorer maps ``(images, text)`` to one float per image, higher = better match. CLIP scorers return
the cosine similarity of the image and text embeddings; :func:`clip_score_100` gives the same
number on torchmetrics' ``CLIPScore`` scale (``100 * max(cos, 0)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

from ..errors import BestshotError


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, images: Sequence[Image.Image], text: str | Sequence[str]) -> list[float]:
        """One score per image; ``text`` is one prompt for all images or one prompt per image."""
        ...

    def truncate(self, text: str) -> tuple[str, bool]:
        """``text`` cut to what the scorer can read, and whether anything was cut."""
        ...


def clip_score_100(cos: float) -> float:
    """torchmetrics' CLIPScore convention: ``100 * max(cos, 0)``."""
    return 100.0 * max(float(cos), 0.0)


def texts_per_image(images: Sequence[Image.Image], text: str | Sequence[str]) -> list[str]:
    """``text`` as one prompt per image (one text for all, or a list as long as ``images``)."""
    texts = [text] * len(images) if isinstance(text, str) else list(text)
    if len(texts) != len(images):
        raise BestshotError(f"got {len(images)} images but {len(texts)} texts — give one text, or one per image")
    return texts
