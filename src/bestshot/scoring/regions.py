"""Regions: find the objects of a plain-background image and show each one to CLIP alone.

Why: a small CLIP reads one object well and several objects badly. The embedded CLIP names the shape of a
lone world object right 98 % of the time, but the shape of each object of a pair only 81.5 % and of a
triple 73.3 % (``bench/clip_binding.py``): its pooled embedding is a bag of objects whose shapes and
colours it does not bind. Cropping regions and classifying each crop with CLIP is how open-vocabulary
detectors sidestep that (R-CNN on CLIP crops, RegionCLIP); here the regions are cut out in place, so each
object keeps its size and position and its image still looks like the world's one-object scenes.

How (no learned part; nothing about the world's palette or shapes is used):
1. background = median colour of a 2-pixel border ring; its spread estimates the noise level, and a noisy
   image is median-filtered (3×3) before the next step.
2. foreground = pixels farther than ``threshold`` from the background colour; 8-connected components,
   those smaller than ``min_area`` (fraction of the image) dropped, the largest ``max_regions`` kept.
3. each region alone: the image with every foreground pixel outside the region (grown by ``grow`` pixels,
   which keeps its soft edge) painted in the background colour.

:func:`find_regions` returns the regions and their isolated images; a CLIP scorer embeds those like any
other image. Two users:
- :class:`RegionScorer` (spec suffix ``+regions``; ``embedded+regions`` is the embedded model's default
  scorer) scores each object phrase of a prompt against the regions alone, and the stated relation against
  where the matched regions are; given a closed vocabulary of nouns (the embedded model's: its world's
  shapes) it also asks CLIP, zero-shot, which of them each matched region is;
- the world interrogator (``interrogate.interrogator``) reads every region as a one-object prompt and takes
  the count and the relation from the regions' centroids.
It suits images of separate objects on a plain background (the embedded world); on a photograph the
border is no background and the regions mean little.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import BestshotError
from .base import texts_per_image
from .masks import dilate, label8, median3x3


@dataclass(frozen=True)
class Region:
    """One foreground component. Coordinates are fractions of the image side (x right, y down)."""

    cx: float
    cy: float
    area: float  # fraction of the image's pixels
    box: tuple[float, float, float, float]  # x0, y0, x1, y1


def background_colour(arr: np.ndarray, ring: int = 2) -> tuple[np.ndarray, float]:
    """Median colour of the border ring of an (H, W, 3) float array, and the ring's noise (a robust standard
    deviation, averaged over the channels)."""
    border = np.concatenate(
        [
            arr[:ring].reshape(-1, 3),
            arr[-ring:].reshape(-1, 3),
            arr[:, :ring].reshape(-1, 3),
            arr[:, -ring:].reshape(-1, 3),
        ]
    )
    bg = np.median(border, 0)
    # robust spread: the median absolute deviation (objects touching the border do not inflate it)
    noise = float(np.median(np.abs(border - bg), 0).mean() * 1.4826)
    return bg, noise


def find_regions(
    image: Image.Image, threshold: float = 40.0, min_area: float = 0.006, max_regions: int = 4, grow: int = 1
) -> tuple[list[Region], list[Image.Image]]:
    """The foreground regions of ``image`` (largest first) and, for each, the image with only that region.

    ``threshold``: RGB distance (0-255 scale) from the background colour above which a pixel is foreground;
    raised to 4× the border's noise on noisy images.
    """
    raw = np.asarray(image.convert("RGB"))
    arr = raw.astype(np.float32)
    h, w = arr.shape[:2]
    bg, noise = background_colour(arr)
    smooth = median3x3(arr) if noise > 4.0 else arr
    dist = np.linalg.norm(smooth - bg, axis=-1)
    fg = dist > max(threshold, 4.0 * noise)
    labels, n = label8(fg)
    if n == 0:
        return [], []
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = [i + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= min_area * h * w][:max_regions]
    regions, isolated = [], []
    fill = np.clip(np.rint(bg), 0, 255).astype(np.uint8)
    # every pixel that is foreground before smoothing (or near it) belongs to some object: paint others over
    raw_dist = dist if smooth is arr else np.linalg.norm(arr - bg, axis=-1)
    loose = dilate(raw_dist > max(threshold / 2, 3.0 * noise), grow) | dilate(fg, grow)
    for lab in keep:
        mask = labels == lab
        ys, xs = np.nonzero(mask)
        weight = dist[ys, xs]
        cx, cy = float((xs + 0.5) @ weight / weight.sum() / w), float((ys + 0.5) @ weight / weight.sum() / h)
        regions.append(
            Region(
                cx,
                cy,
                float(mask.sum() / (h * w)),
                (float(xs.min() / w), float(ys.min() / h), float((xs.max() + 1) / w), float((ys.max() + 1) / h)),
            )
        )
        own = dilate(mask, grow + 1)
        out = raw.copy()
        out[loose & ~own] = fill
        isolated.append(Image.fromarray(out, "RGB"))
    return regions, isolated


# ------------------------------------------------------------------------------------------- scoring
_SPLIT_RE = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")
_BG_RE = re.compile(r"\s+(?:on|against)\s+(?:an?\s+)?[\w-]+(?:\s+background)?\s*$")


@dataclass(frozen=True)
class ObjectPrompt:
    """A prompt read as 1-3 object phrases, the relation of two (as ``objects[0] <relation> objects[1]``)
    and the background clause ("on a white background", or "")."""

    objects: tuple[str, ...]
    relation: str | None
    background: str


def parse_objects(prompt: str, max_objects: int = 3) -> ObjectPrompt | None:
    """``prompt`` as object phrases, or None when it is not a short list of objects.

    >>> parse_objects("a red circle, a blue square and a green cross on a black background")
    ObjectPrompt(objects=('a red circle', 'a blue square', 'a green cross'), relation=None, \
background='on a black background')
    """
    from ..models.maskclip import _LEAD_RE, parse_relation

    text = _LEAD_RE.sub("", " ".join(prompt.lower().strip().rstrip(".!").split()))
    m = _BG_RE.search(text)
    background = m.group(0).strip() if m else ""
    body = text[: m.start()] if m else text
    rel = parse_relation(text)
    phrases = (rel.a, rel.b) if rel else tuple(p for p in _SPLIT_RE.split(body) if p)
    # each phrase a short noun phrase ("a small red circle"), not a style clause of an art prompt
    if not 1 <= len(phrases) <= max_objects or any(len(p.split()) > 5 for p in phrases):
        return None
    return ObjectPrompt(tuple(phrases), rel.relation if rel else None, background)


@dataclass(frozen=True)
class Reading:
    """One object phrase as :meth:`RegionScorer.locate` reads it: the region matched to it (None: no region took
    it), its quality (the scorer's per-phrase terms: ``w_obj`` × cosine + ``w_nouns`` × noun log-probability;
    -inf without a region), the probability that the region is the phrase's kind of thing among the closed
    vocabulary's nouns and that it has the phrase's colour among the vocabulary's colours (each None without a
    vocabulary or without such a word in the phrase)."""

    phrase: str
    region: Region | None
    quality: float
    noun: float | None
    colour: float | None = None
    noun_top: bool | None = None  # the phrase's noun is the likeliest of the vocabulary's (None: no vocabulary)
    colour_top: bool | None = None  # the same for its colour


@dataclass(frozen=True)
class Located:
    """Every object phrase of a prompt read in one image, the stated relation's agreement (-1..1; 0 without a
    relation) and the regions no phrase took."""

    objects: tuple[Reading, ...]
    agreement: float
    relation: str | None
    unmatched: tuple[Region, ...]


def assignment(sims: torch.Tensor, r: int, k: int) -> tuple[float, dict[int, int]]:
    """The best matching of ``k`` phrases to ``r`` regions by the (regions, phrases) cosines ``sims``: its mean
    cosine over the phrases (0 for a phrase without a region) and phrase j → region index. The first of
    equally good assignments wins."""
    return max(
        (
            (
                sum(float(sims[perm[j], j]) for j in range(k) if perm[j] < r) / k,
                {j: perm[j] for j in range(k) if perm[j] < r},
            )
            for perm in itertools.permutations(range(max(r, k)), k)
        ),
        key=lambda c: c[0],
    )


def _swaps(phrase: str, vocab: tuple[str, ...], last: bool) -> tuple[list[str], int] | None:
    """``phrase`` with its word from ``vocab`` (its last word only with ``last``; else the first such word) swapped
    for each word of ``vocab``, and the index of its own; None when it has none."""
    words = phrase.split()
    at = [len(words) - 1] if last else range(len(words))
    for i in at:
        if vocab and words and words[i] in vocab:
            return [" ".join(words[:i] + [v] + words[i + 1 :]) for v in vocab], vocab.index(words[i])
    return None


def world_colours() -> tuple[str, ...]:
    """The embedded model's closed vocabulary of colours: its world's."""
    from ..world import COLOURS

    return tuple(COLOURS)


def world_nouns() -> tuple[str, ...]:
    """The embedded model's closed vocabulary of object kinds: its world's shapes."""
    from ..world import SHAPES

    return SHAPES


class RegionScorer:
    """A CLIP scorer that also reads each object of a prompt where it is (see the module doc).

    For a prompt of 1-3 object phrases, the image's regions (:func:`find_regions`) are shown to CLIP alone
    and matched to the phrases (each phrase with the prompt's background clause: "a small red circle on a
    white background"), best assignment first. The score is the weighted mean
    ``(cosine + w_obj * objects + w_rel * agreement - count_penalty * |regions - phrases|) / (1 + w_obj + w_rel)``:
    ``objects`` is the matched phrases' mean cosine (0 for a phrase no region took), ``agreement`` how well
    the two matched regions' centroids fit the stated relation (``spatial.agreement``). Other prompts score
    as the wrapped scorer does. The weights were tuned on the generator's candidates for *training*
    prompts (``bench/region_scorer.py``; bench/RESULTS.md).

    ``nouns`` (a closed vocabulary, e.g. the embedded world's shapes, :func:`world_nouns`) adds a zero-shot
    classification term: for a phrase whose last word is one of them, the matched region's log-probability
    of that noun against the others (the phrase with its noun swapped, softmax of ``temperature`` ×
    cosine), mean over the phrases (a phrase no region took counts ``MISSING_LOG_PROB``), times
    ``w_nouns``, is added to the score. Raw cosines mix how well an object's colour, size and edges fit;
    the contrast asks only whether it is that *kind* of thing, where the generator most often errs.
    """

    MISSING_LOG_PROB = -5.0
    # a weighted mean of cosines (at most 1) plus the nouns' log-probabilities (at most 0): no lower bound; the
    # gate's default is the wrapped CLIP's (``default_min`` is read through to it)
    units, score_range = "region score", (float("-inf"), 1.0)

    def __init__(
        self,
        base: Any,
        w_obj: float = 4.0,
        w_rel: float = 0.5,
        count_penalty: float = 0.1,
        gain: float = 5.0,
        nouns: Sequence[str] = (),
        w_nouns: float = 0.05,
        temperature: float = 100.0,
        colours: Sequence[str] = (),
    ):
        if min(w_obj, w_rel, count_penalty, w_nouns, temperature) < 0:
            raise BestshotError("region scorer weights must be >= 0")
        self.base, self.w_obj, self.w_rel, self.count_penalty, self.gain = base, w_obj, w_rel, count_penalty, gain
        self.nouns, self.w_nouns, self.temperature = tuple(nouns), w_nouns, temperature
        self.colours = tuple(colours)  # read by locate() only: the score is the same with or without them
        self.name = f"{base.name}+regions"

    def __getattr__(self, item: str) -> Any:  # only called for what this class does not define
        if item == "base":
            raise AttributeError(item)
        return getattr(self.base, item)

    def _alternatives(self, phrase: str) -> tuple[list[str], int] | None:
        """``phrase`` with its noun swapped for each of ``nouns``, and the index of its own; None when its
        last word is not one of them."""
        return _swaps(phrase, self.nouns, last=True)

    def read(
        self, images: Sequence[Image.Image], text: str, prompt: ObjectPrompt
    ) -> list[tuple[float, torch.Tensor, list[Region], torch.Tensor | None]]:
        """Per image: its pooled cosine with ``text``, the (regions, phrases) cosine matrix of its regions
        seen alone, the regions, and (with ``nouns``) each region's log-probability of each phrase's noun
        against the other nouns, (regions, phrases), NaN for a phrase without a known noun. The images and
        all their regions go through CLIP in one batch, the texts in another."""
        return [r[:4] for r in self._read(images, text, prompt)]

    def _read(
        self, images: Sequence[Image.Image], text: str, prompt: ObjectPrompt, colours: Sequence[str] = ()
    ) -> list[tuple[Any, ...]]:
        """:meth:`read`, plus (with a ``colours`` vocabulary) each region's log-probability of each phrase's
        colour word against the other colours (None without a vocabulary), and whether each phrase's noun and
        colour is the likeliest of its vocabulary (1/0, NaN without one; None without a vocabulary)."""
        found = [find_regions(im, max_regions=len(prompt.objects) + 2) for im in images]
        flat = list(images) + [iso for _, isos in found for iso in isos]
        bg = f" {prompt.background}" if prompt.background else ""
        swaps = [[self._alternatives(p) for p in prompt.objects]]
        if colours:
            swaps.append([_swaps(p, tuple(colours), last=False) for p in prompt.objects])
        alt_texts = [f"{a}{bg}" for alts in swaps for alt in alts if alt for a in alt[0]]
        texts = [text] + [f"{p}{bg}" for p in prompt.objects] + alt_texts
        t = self.base.embed_texts(texts).float().cpu()
        e = self.base.embed_images(flat).float().cpu()
        k = len(prompt.objects)
        cos, parts = (e[: len(images)] @ t[0]).tolist(), e[len(images) :] @ t[1 : k + 1].T
        logps: list[torch.Tensor | None] = []
        tops: list[torch.Tensor | None] = []
        j0 = k + 1
        for alts in swaps:
            if not any(alts):
                logps.append(None)
                tops.append(None)
                continue
            logp = torch.full((len(flat) - len(images), k), float("nan"))
            top = torch.full_like(logp, float("nan"))  # 1 where the phrase's own word is the likeliest, else 0
            for j, alt in enumerate(alts):
                if alt:
                    sims = e[len(images) :] @ t[j0 : j0 + len(alt[0])].T
                    lp = torch.log_softmax(self.temperature * sims, dim=-1)
                    logp[:, j] = lp[:, alt[1]]
                    top[:, j] = (lp.argmax(-1) == alt[1]).float()
                    j0 += len(alt[0])
            logps.append(logp)
            tops.append(top)
        if len(logps) == 1:
            logps.append(None)
            tops.append(None)
        out, i = [], 0
        for c, (regs, _) in zip(cos, found):
            cut = [None if lp is None else lp[i : i + len(regs)] for lp in logps]
            top = [None if tp is None else tp[i : i + len(regs)] for tp in tops]
            out.append((c, parts[i : i + len(regs)], regs, cut[0], cut[1], top[0], top[1]))
            i += len(regs)
        return out

    def combine(
        self,
        cos: float,
        sims: torch.Tensor,
        regions: Sequence[Region],
        prompt: ObjectPrompt,
        logp: torch.Tensor | None = None,
    ) -> float:
        """The score of one image from its pooled ``cos``, its region ``sims`` and (with ``nouns``) its
        regions' noun log-probabilities ``logp`` (see the class doc and :meth:`read`)."""
        k, r = len(prompt.objects), len(regions)
        best, assign = assignment(sims, r, k)
        agree = self._agreement(regions, assign, prompt)
        total = cos + self.w_obj * best + self.w_rel * agree - self.count_penalty * abs(r - k)
        total = total / (1 + self.w_obj + self.w_rel)
        known = [j for j in range(k) if self._alternatives(prompt.objects[j])] if logp is not None else []
        if known and self.w_nouns:
            lp = [float(logp[assign[j], j]) if j in assign else self.MISSING_LOG_PROB for j in known]
            total += self.w_nouns * sum(lp) / len(lp)
        return total

    def _agreement(self, regions: Sequence[Region], assign: dict[int, int], prompt: ObjectPrompt) -> float:
        """How well the matched regions fit the stated relation (0 without one; -1 when a phrase has no region)."""
        from ..models.maskclip import agreement

        if prompt.relation and len(prompt.objects) == 2 and len(assign) == 2:
            a, b = regions[assign[0]], regions[assign[1]]
            return float(agreement(torch.tensor([a.cx, a.cy]), torch.tensor([b.cx, b.cy]), prompt.relation, self.gain))
        return -1.0 if prompt.relation else 0.0

    def locate(self, image: Image.Image, text: str) -> Located | None:
        """Where each object phrase of ``text`` is in ``image`` and how well its region reads as it (the terms of
        :meth:`combine`, per phrase): what :mod:`bestshot.repair` keeps and repaints. None when ``text`` is not a
        short list of objects."""
        prompt = parse_objects(text)
        if prompt is None:
            return None
        cos, sims, regions, logp, logc, top_n, top_c = self._read([image], text, prompt, colours=self.colours)[0]
        _, assign = assignment(sims, len(regions), len(prompt.objects))

        def value(table: torch.Tensor | None, r: int, j: int) -> float | None:  # None: no known word in the phrase
            v = float(table[r, j]) if table is not None else float("nan")
            return None if v != v else v

        def prob(table: torch.Tensor | None, r: int, j: int) -> float | None:
            v = value(table, r, j)
            return None if v is None else math.exp(v)

        readings = []
        for j, phrase in enumerate(prompt.objects):
            if j not in assign:
                readings.append(Reading(phrase, None, float("-inf"), None))
                continue
            r = assign[j]
            noun = prob(logp, r, j)
            quality = self.w_obj * float(sims[r, j]) + (self.w_nouns * math.log(noun) if noun else 0.0)
            tn, tc = value(top_n, r, j), value(top_c, r, j)
            readings.append(
                Reading(
                    phrase,
                    regions[r],
                    quality,
                    noun,
                    prob(logc, r, j),
                    None if tn is None else bool(tn),
                    None if tc is None else bool(tc),
                )
            )
        extra = [regions[i] for i in range(len(regions)) if i not in assign.values()]
        return Located(tuple(readings), self._agreement(regions, assign, prompt), prompt.relation, tuple(extra))

    def score(self, images: Sequence[Image.Image], text: str | Sequence[str]) -> list[float]:
        if not images:
            return []
        texts = texts_per_image(images, text)
        out = [0.0] * len(images)
        for t in dict.fromkeys(texts):
            rows = [i for i, u in enumerate(texts) if u == t]
            prompt = parse_objects(t)
            if prompt is None:
                scores = self.base.score([images[i] for i in rows], t)
            else:
                scores = [
                    self.combine(c, sims, regs, prompt, logp)
                    for c, sims, regs, logp in self.read([images[i] for i in rows], t, prompt)
                ]
            for i, v in zip(rows, scores):
                out[i] = v
        return out
