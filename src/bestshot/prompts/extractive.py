"""Deterministic, model-free article → image prompt (the last link of Mode B's fallback chain).

Why a heuristic at all: an LLM can be missing (no weights offline), fail to load, or answer with
nothing usable. Mode B must still produce *some* prompt, and the same article must always give the
same prompt so runs stay reproducible. News-style text puts its subject in the lead sentence, and the
words an article repeats are what it is about, so: lead sentence + most frequent content words.
"""

from __future__ import annotations

import re
from collections import Counter

# Common English function words plus reporting verbs/fillers that are frequent in articles but never
# something you can draw. Kept short on purpose: it only has to push the salient nouns to the top.
STOPWORDS = frozenset(
    """
    a about above after again against all also although am among an and another any are around as at
    be because been before being below between both but by can cannot could did do does doing done
    down during each either else even ever every few for from further had has have having he her here
    hers herself him himself his how however i if in into is it its itself just least less let like
    made make many may me might more most much must my myself near neither no nor not now of off on
    once one only onto or other others our ours ourselves out over own per perhaps quite rather really
    same several shall she should since so some such than that the their theirs them themselves then
    there these they this those though through thus to too toward towards under until up upon us very
    via was we were what whatever when where whether which while who whom whose why will with within
    without would yet you your yours yourself yourselves
    according added announced asked back called came come comes told percent said says say saying
    week weeks year years month months day days today yesterday tuesday wednesday thursday friday
    saturday sunday monday time times new first last next including include includes including
    get got go going gone know known like likely way ways well still take takes taken use used using
    two three four five six seven eight nine ten mr mrs ms dr people thing things lot lots part
    """.split()
)

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]|[A-Za-z]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_MARKUP = re.compile(r"[*_`#>\[\]{}|\"“”«»]+")


def _clean(text: str) -> str:
    """Drop markdown/quote characters and collapse whitespace (they only add noise to a prompt)."""
    return re.sub(r"\s+", " ", _MARKUP.sub(" ", text)).strip()


def _words(text: str) -> list[str]:
    return text.split()


def lead_sentence(text: str, min_words: int = 4) -> str:
    """The first sentence (or title line) with at least ``min_words`` words; else the first one.

    Titles have no final period, so newlines also end a sentence; very short lines (a byline, a date)
    are skipped because they rarely name the subject.
    """
    parts = [_clean(p) for p in _SENTENCE_END.split(text)]
    parts = [p for p in parts if p]
    for p in parts:
        if len(_WORD.findall(p)) >= min_words:
            return p
    return parts[0] if parts else ""


def keywords(text: str, k: int = 8) -> list[str]:
    """The ``k`` most frequent content words, ties broken by first appearance; first casing kept.

    Case-folded counting so "Arctic" and "arctic" add up, but the first spelling is returned so proper
    nouns keep their capital.
    """
    counts: Counter[str] = Counter()
    first_form: dict[str, str] = {}
    order: dict[str, int] = {}
    for w in _WORD.findall(text):
        key = w.lower().strip("'-")
        if len(key) < 3 or key in STOPWORDS or key.endswith("'s") and key[:-2] in STOPWORDS:
            continue
        counts[key] += 1
        first_form.setdefault(key, w)
        order.setdefault(key, len(order))
    ranked = sorted(counts, key=lambda w: (-counts[w], order[w]))
    return [first_form[w] for w in ranked[:k]]


def extractive_prompt(text: str, max_words: int = 40) -> str:
    """Lead sentence (trailing period dropped) + frequent content words not already in it.

    Deterministic and bounded to ``max_words`` words; never empty for text that has any
    non-whitespace character (falls back to the first words of the cleaned text).
    """
    if not text or not text.strip():
        return ""
    max_words = max(1, max_words)
    lead = lead_sentence(text).rstrip(".!?;:, ")
    lead_words = _words(lead)[: max(1, (max_words * 2) // 3)]  # leave room for keywords
    in_lead = {w.lower().strip(".,;:!?'()") for w in lead_words}
    extra = [w for w in keywords(text, k=max_words) if w.lower() not in in_lead]
    budget = max_words - len(lead_words)
    extra = extra[: min(8, max(0, budget))]
    prompt = " ".join(lead_words).rstrip(".!?;:, ")
    if extra:
        prompt = f"{prompt}, {', '.join(extra)}" if prompt else ", ".join(extra)
    if not prompt.strip(" ,"):
        # No words at all (e.g. only digits/punctuation): still return something non-empty.
        prompt = " ".join(_words(_clean(text)) or [text.strip()])
    return " ".join(prompt.split()[:max_words])
