"""Prompt assembly shared by every job: content filter, style suffix, trigger words, CLIP prompt.

The order: user prompt → content filter → add style suffix → normalise. The CLIP
prompt is the user's words *without* the style suffix (a suffix like ", 8k" says nothing CLIP can
check), cut to what the scorer reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import BestshotError


def normalise(text: str) -> str:
    """One line, single spaces, no stray separators at the ends."""
    text = re.sub(r"\s+", " ", text or "").strip()
    return text.strip(" ,;")


def blocked_terms(prompt: str, blocklist: Iterable[str]) -> list[str]:
    """The blocklist entries that occur in ``prompt`` as whole words (case-insensitive)."""
    low = prompt.lower()
    hits = []
    for term in blocklist:
        t = term.strip().lower()
        if t and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", low):
            hits.append(term)
    return hits


@dataclass(frozen=True)
class BuiltPrompt:
    sd_prompt: str  # what the pipeline receives
    clip_prompt: str  # what the scorer compares against
    negative_prompt: str


def build_prompt(
    prompt: str,
    *,
    style_suffix: str = "",
    negative_prompt: str = "",
    trigger_words: Sequence[str] = (),
    clip_prompt: str | None = None,
    allow_empty: bool = False,
    attention: bool = False,
) -> BuiltPrompt:
    """Assemble the pipeline prompt (triggers + prompt + style suffix) and the CLIP prompt (``allow_empty``:
    an empty prompt is kept, for unconditioned images, instead of refused; ``attention``: the CLIP prompt drops
    A1111 weight syntax, ``(red:1.5)`` → ``red``)."""
    core = normalise(prompt)
    if not core and not allow_empty:
        raise BestshotError('the prompt is empty — give a text prompt, e.g. bestshot generate "a red circle"')
    parts = [normalise(t) for t in trigger_words if normalise(t)]
    sd = ", ".join(parts + [core])
    suffix = (style_suffix or "").strip()
    if suffix:
        sd = f"{sd}{suffix}" if suffix.startswith(",") else f"{sd}, {suffix}"
    clip = normalise(clip_prompt or core)
    if attention:
        from .attention import plain

        clip = normalise(plain(clip))
    return BuiltPrompt(sd_prompt=normalise(sd), clip_prompt=clip, negative_prompt=normalise(negative_prompt))
