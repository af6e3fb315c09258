"""FID, KID, Inception Score, CLIP score and CMMD on precomputed features, and ``evaluate_sets``.

Every metric takes feature arrays, not images: features come from a pluggable extractor
(``features.py``) and can be cached, and the maths can be checked against an independent computation.
FID, KID and IS run torchmetrics' own metric classes, fed through an identity "feature network"
(torchmetrics accepts any ``nn.Module`` as ``feature``), in float64. CLIP score and CMMD have no
embedding-level code in torchmetrics, so they are the few lines of their definitions:

* CLIP score (Hessel et al. 2021, torchmetrics' docstring): ``100 * max(cos(E_image, E_text), 0)``
  per pair, averaged. torchmetrics' ``CLIPScore.compute`` clamps the *mean* instead; the two agree
  whenever no pair has a negative cosine.
* CMMD (Jayasumana et al. 2024, "Rethinking FID"): MMD² with a Gaussian RBF kernel, sigma=10, on
  L2-normalised CLIP embeddings, times 1000 — the minimum-variance (biased, V-statistic) estimator of
  the official google-research/cmmd ``distance.py``, so a set against itself is exactly 0.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from bestshot.errors import BestshotError
from bestshot.evaluate.features import (
    ClipExtractor,
    FeatureExtractor,
    ImageLike,
    cached_features,
    extract,
    iter_batches,
)
from bestshot.evaluate.manifest import IMAGE_SUFFIXES, check_image, read_manifest


class _Precomputed(torch.nn.Module):
    """Identity "feature network": lets torchmetrics' metric classes run on features we already have."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _as2d(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if t.dim() != 2 or t.shape[0] == 0:
        raise BestshotError(f"{what} must be a non-empty (samples, dim) array, got shape {tuple(t.shape)}")
    return t


def _same_dim(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise BestshotError(
            f"feature sizes differ ({a.shape[1]} vs {b.shape[1]}) — both sets must use the same extractor"
        )


def fid(feats_real: Any, feats_fake: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (torchmetrics' FID, float64)."""
    real, fake = _as2d(feats_real, "real features"), _as2d(feats_fake, "fake features")
    _same_dim(real, fake)
    if min(len(real), len(fake)) < 2:
        raise BestshotError("FID needs at least 2 images in each set")
    if min(len(real), len(fake)) <= real.shape[1]:
        warnings.warn(
            f"FID with {min(len(real), len(fake))} samples for {real.shape[1]}-d features: the covariances "
            "are singular and the value is biased upwards — compare only runs with equal sample counts",
            stacklevel=2,
        )
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def fid_from_stats(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet distance of two Gaussians, e.g. a reference's precomputed statistics (``load_fid_stats``) and a
    generated set's: ``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)`` in float64 (torchmetrics' formula, through the
    eigenvalues of S1 S2, as in ``fid``)."""
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(s), dtype=torch.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise BestshotError(
            f"FID statistics do not fit together (mu {tuple(mu1.shape)} vs {tuple(mu2.shape)}, "
            f"sigma {tuple(s1.shape)} vs {tuple(s2.shape)}) — both must come from the same extractor"
        )
    a = (mu1 - mu2).square().sum()
    b = s1.trace() + s2.trace()
    c = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    return float(a + b - 2 * c)


def kid(
    feats_real: Any,
    feats_fake: Any,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (unbiased polynomial-kernel MMD², torchmetrics) → (mean, std) over
    ``subsets`` random subsets. ``subset_size`` is capped at the smaller set size; seeded."""
    real, fake = _as2d(feats_real, "real features"), _as2d(feats_fake, "fake features")
    _same_dim(real, fake)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise BestshotError("KID needs at least 2 images in each set")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features in buffer"
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]),
            subsets=subsets,
            subset_size=size,
            degree=degree,
            gamma=gamma,
            coef=coef,
        )
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: Any = None, *, probs: Any = None, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) → (mean, std) over ``splits`` (torchmetrics).

    Pass class ``logits`` (e.g. Inception's ``logits_unbiased``) or class ``probs``. Samples are
    shuffled (seeded) before splitting, as torchmetrics does; ``splits=1`` gives the plain formula.
    """
    if (logits is None) == (probs is None):
        raise BestshotError("inception_score needs exactly one of logits= or probs=")
    if probs is not None:
        p = _as2d(probs, "class probabilities")
        if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(len(p), dtype=p.dtype), atol=1e-4):
            raise BestshotError("probs must be non-negative and sum to 1 per row — pass logits= for raw scores")
        x = p.clamp_min(1e-300).log()  # softmax(log p) == p; the clamp keeps 0*log(0) from becoming NaN
    else:
        x = _as2d(logits, "class logits")
    if not 1 <= splits <= len(x):
        raise BestshotError(f"inception score splits={splits} must be between 1 and the number of images ({len(x)})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=_Precomputed(x.shape[1]), splits=splits)
    metric.update(x)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # std() of a single split
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), (0.0 if splits == 1 else float(std))


def pairwise_cosine(a: Any, b: Any) -> np.ndarray:
    """Cosine similarity of row i of ``a`` with row i of ``b`` (e.g. image i with its caption)."""
    x, y = _as2d(a, "image embeddings"), _as2d(b, "text embeddings")
    _same_dim(x, y)
    if len(x) != len(y):
        raise BestshotError(f"{len(x)} images but {len(y)} captions — CLIP score needs one caption per image")
    return torch.nn.functional.cosine_similarity(x, y, dim=1).numpy()


def clip_score(image_embeds: Any, text_embeds: Any) -> dict[str, float]:
    """{"cosine": mean raw cosine, "clip_score": mean of 100*max(cos, 0)} over image/caption pairs."""
    cos = pairwise_cosine(image_embeds, text_embeds)
    return {"cosine": float(cos.mean()), "clip_score": float((100 * np.maximum(cos, 0)).mean())}


def _gaussian_kernel_mean(x: torch.Tensor, y: torch.Tensor, gamma: float, block: int = 2048) -> torch.Tensor:
    """mean_ij exp(-gamma * |x_i - y_j|²), in blocks so large sets never build an n×n matrix at once."""
    total = torch.zeros((), dtype=torch.float64)
    y_sq = (y * y).sum(1)
    for i in range(0, len(x), block):
        xb = x[i : i + block]
        d2 = (xb * xb).sum(1)[:, None] + y_sq[None, :] - 2 * xb @ y.T
        total += torch.exp(-gamma * d2.clamp_min(0)).sum()
    return total / (len(x) * len(y))


def cmmd(emb_a: Any, emb_b: Any, sigma: float = 10.0, scale: float = 1000.0, normalize: bool = True) -> float:
    """CMMD: scale · MMD² with a Gaussian RBF kernel of bandwidth ``sigma`` (official defaults 10 and
    1000), on L2-normalised embeddings, biased estimator as in google-research/cmmd."""
    x, y = _as2d(emb_a, "embeddings a"), _as2d(emb_b, "embeddings b")
    _same_dim(x, y)
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
        y = torch.nn.functional.normalize(y, dim=1)
    gamma = 1.0 / (2 * sigma**2)
    mmd2 = (
        _gaussian_kernel_mean(x, x, gamma) + _gaussian_kernel_mean(y, y, gamma) - 2 * _gaussian_kernel_mean(x, y, gamma)
    )
    return float(scale * mmd2)


def load_image_set(source: str | os.PathLike | Sequence[ImageLike]) -> tuple[list[ImageLike], list[str] | None]:
    """A folder of images, a manifest CSV or a list → (images, captions or None).

    Folder images that are corrupt are reported and skipped, like bad manifest rows.
    """
    if not isinstance(source, (str, os.PathLike)):
        return list(source), None
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".csv":
        rows = read_manifest(path)
        return [r.image_path for r in rows], [r.caption for r in rows]
    if not path.is_dir():
        raise BestshotError(f"{path} is neither a folder of images nor a manifest .csv")
    images, bad = [], []
    for p in sorted(q for q in path.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file()):
        problem = check_image(p)
        (bad.append(f"{p.name}: {problem}") if problem else images.append(p))
    if bad:
        warnings.warn(f"unreadable images in {path} ({len(bad)}), skipped: {', '.join(bad[:10])}", stacklevel=2)
    if not images:
        raise BestshotError(f"no image in {path} — expected .png/.jpg/.webp files")
    return images, None


def _prefetch(
    extractor: FeatureExtractor, clip, fake_images: Sequence[ImageLike], captions: list[str] | None, batch_size: int
) -> None:
    """A distributed extractor (``bestshot.scale.features``) embeds the generated images and their captions in
    one Ray job, instead of one job (and one model load per worker) for each."""
    ok = captions is not None and len(captions) == len(fake_images)
    for ext in dict.fromkeys(e for e in (extractor, clip) if e is not None):
        if hasattr(ext, "prefetch"):
            ext.prefetch(fake_images, batch_size, captions=captions if ok and (ext is clip or clip is None) else None)


def _features_and_logits(
    extractor: FeatureExtractor, images: Sequence[ImageLike], batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    if hasattr(extractor, "extract_items_and_logits"):  # distributed (bestshot.scale.features), same batches
        return extractor.extract_items_and_logits(images, batch_size)
    if hasattr(extractor, "features_and_logits"):
        parts = [extractor.features_and_logits(b) for b in iter_batches(images, batch_size)]
        return np.concatenate([f for f, _ in parts]), np.concatenate([lg for _, lg in parts])
    if hasattr(extractor, "logits"):
        batches = list(iter_batches(images, batch_size))
        return (
            np.concatenate([extractor.features(b) for b in batches]),
            np.concatenate([extractor.logits(b) for b in batches]),
        )
    return extract(extractor, images, batch_size), None


def evaluate_sets(
    real: str | os.PathLike | Sequence[ImageLike],
    fake: str | os.PathLike | Sequence[ImageLike],
    extractor: FeatureExtractor,
    *,
    clip: ClipExtractor | None = None,
    captions: list[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    real_key: str | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    seed: int = 0,
    batch_size: int = 32,
    real_stats: str | os.PathLike | None = None,
    save_real_stats: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """All metrics for one generated set against a reference set, with what they were computed with.

    ``real`` / ``fake``: a folder, a manifest CSV or a list of paths / PIL images. ``extractor`` gives
    FID/KID features (and IS logits when it has them). CMMD and CLIP score use ``clip`` (or
    ``extractor`` itself when it is a :class:`ClipExtractor`); CLIP score needs ``captions`` for the
    fake images (taken from ``fake`` when it is a manifest). Real features are cached in ``cache_dir``.
    A metric that cannot be computed is None, with the reason in ``notes``.

    ``real_stats``: precomputed FID statistics of the reference (``.npz`` with mu/sigma, ours, clean-fid's or
    pytorch-fid's) used instead of ``real`` (which may then be None): FID only, since KID and CMMD need the
    reference's features. ``save_real_stats`` writes the reference's statistics for next time.
    """
    if real_stats is not None:
        return _evaluate_against_stats(
            real_stats,
            fake,
            extractor,
            captions=captions,
            clip=clip,
            is_splits=is_splits,
            seed=seed,
            batch_size=batch_size,
        )
    real_images, _ = load_image_set(real)
    fake_images, fake_captions = load_image_set(fake)
    captions = captions if captions is not None else fake_captions
    if real_key is None:
        real_key = Path(real).stem if isinstance(real, (str, os.PathLike)) else "real"
    notes: list[str] = []
    _prefetch(extractor, clip, fake_images, captions, batch_size)

    def real_feats(ext: FeatureExtractor) -> np.ndarray:
        if cache_dir is None:
            return extract(ext, real_images, batch_size)
        return cached_features(ext, real_key, real_images, cache_dir, batch_size)

    fr = real_feats(extractor)
    if save_real_stats is not None:
        from bestshot.evaluate.features import save_fid_stats

        save_fid_stats(save_real_stats, fr, extractor=extractor.name, resize=extractor.resize)
    ff, logits = _features_and_logits(extractor, fake_images, batch_size)
    kid_mean, kid_std = kid(fr, ff, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    result: dict[str, Any] = {
        "extractor": extractor.name,
        "resize": extractor.resize,
        "n_real": len(real_images),
        "n_fake": len(fake_images),
        "fid": fid(fr, ff),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subsets": kid_subsets,
        "kid_subset_size": min(kid_subset_size, len(real_images), len(fake_images)),
        "is_mean": None,
        "is_std": None,
        "is_splits": None,
        "cmmd": None,
        "clip_score": None,
        "clip_cosine": None,
        "clip_extractor": None,
        "clip_resize": None,
    }
    _inception_and_clip(
        result,
        notes,
        logits,
        is_splits,
        seed,
        extractor,
        ff,
        fake_images,
        captions,
        clip,
        batch_size,
        real_feats=real_feats,
        fr=fr,
    )
    return result


def _inception_and_clip(
    result: dict[str, Any],
    notes: list[str],
    logits,
    is_splits: int,
    seed: int,
    extractor: FeatureExtractor,
    ff: np.ndarray,
    fake_images,
    captions,
    clip,
    batch_size: int,
    real_feats=None,
    fr: np.ndarray | None = None,
) -> None:
    """Fill in the Inception score (from the extractor's logits) and, with a CLIP, CMMD (when the reference's
    features are at hand: ``real_feats``) and the CLIP score of the captions; a metric that cannot be computed
    stays None with the reason in ``notes``."""
    if logits is not None:
        splits = min(is_splits, len(fake_images))
        result["is_mean"], result["is_std"] = inception_score(logits, splits=splits, seed=seed)
        result["is_splits"] = splits
    else:
        notes.append("inception score: the extractor has no class logits (use the Inception extractor)")
    clip = clip if clip is not None else (extractor if isinstance(extractor, ClipExtractor) else None)
    if clip is None:
        notes.append("cmmd / clip score: no CLIP model given")
    else:
        result["clip_extractor"], result["clip_resize"] = clip.name, clip.resize
        cf = ff if clip is extractor else extract(clip, fake_images, batch_size)
        if real_feats is not None:
            result["cmmd"] = cmmd(fr if clip is extractor else real_feats(clip), cf)
        if captions is None:
            notes.append("clip score: no captions for the generated images")
        elif len(captions) != len(fake_images):
            notes.append(f"clip score: {len(captions)} captions for {len(fake_images)} images")
        else:
            cs = clip_score(cf, clip.text_features(captions))
            result["clip_score"], result["clip_cosine"] = cs["clip_score"], cs["cosine"]
    result["notes"] = notes


def _evaluate_against_stats(
    stats_path,
    fake,
    extractor: FeatureExtractor,
    *,
    captions=None,
    clip=None,
    is_splits: int = 10,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    from bestshot.evaluate.features import load_fid_stats

    st = load_fid_stats(stats_path)
    notes: list[str] = ["kid / cmmd: the reference is given as FID statistics, not features"]
    for key, mine in (("extractor", extractor.name), ("resize", extractor.resize)):
        if st[key] is None:
            notes.append(f"{Path(stats_path).name} does not record its {key}: assumed to be {mine!r}")
        elif st[key] != mine:
            raise BestshotError(
                f"{stats_path} was computed with {key} {st[key]!r}, not {mine!r} — use the same "
                "extractor and resize, or recompute the statistics"
            )
    fake_images, fake_captions = load_image_set(fake)
    captions = captions if captions is not None else fake_captions
    _prefetch(extractor, clip, fake_images, captions, batch_size)
    ff, logits = _features_and_logits(extractor, fake_images, batch_size)
    if ff.shape[1] != len(st["mu"]):
        raise BestshotError(
            f"{stats_path} holds {len(st['mu'])}-d statistics but the extractor gives {ff.shape[1]}-d "
            "features — use the extractor the statistics were computed with"
        )
    mu, sigma = np.mean(ff.astype(np.float64), axis=0), np.cov(ff.astype(np.float64), rowvar=False)
    result: dict[str, Any] = {
        "extractor": extractor.name,
        "resize": extractor.resize,
        "n_real": st["n"] if st["n"] and st["n"] > 0 else None,
        "n_fake": len(fake_images),
        "fid": fid_from_stats(st["mu"], st["sigma"], mu, sigma),
        "real_stats": str(stats_path),
        "kid_mean": None,
        "kid_std": None,
        "kid_subsets": None,
        "kid_subset_size": None,
        "is_mean": None,
        "is_std": None,
        "is_splits": None,
        "cmmd": None,
        "clip_score": None,
        "clip_cosine": None,
        "clip_extractor": None,
        "clip_resize": None,
    }
    _inception_and_clip(result, notes, logits, is_splits, seed, extractor, ff, fake_images, captions, clip, batch_size)
    return result


__all__ = [
    "fid",
    "fid_from_stats",
    "kid",
    "inception_score",
    "clip_score",
    "pairwise_cosine",
    "cmmd",
    "load_image_set",
    "evaluate_sets",
]
