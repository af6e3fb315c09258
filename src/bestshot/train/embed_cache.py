"""The embedding cache of ``bestshot train embed``: its key, and reading it back checked.

A safetensors file whose metadata records the dataset spec, image size, length, seed and a hash of the
CLIP weights; :func:`load_cache` refuses a cache made for another dataset or CLIP. Written by
:func:`bestshot.train.embed.build_cache`, read by the image_embed DDPM (:mod:`bestshot.train.ddpm`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open

from bestshot import jsonio
from bestshot.errors import BestshotError


def clip_hash(clip_dir: str | Path) -> str:
    """Hash of the CLIP weights file(s) (first 16 hex digits of sha256)."""
    h = hashlib.sha256()
    files = sorted(Path(clip_dir).glob("*.safetensors")) or sorted(Path(clip_dir).glob("*.bin"))
    if not files:
        raise BestshotError(f"no CLIP weights in {clip_dir} — pass a folder written by `bestshot train clip`")
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def cache_key(dataset: str, img_size: int, length: int, clip_dir: str | Path, seed: int = 0) -> dict:
    return {
        "dataset": dataset,
        "img_size": str(img_size),
        "length": str(length),
        "seed": str(seed),
        "clip_hash": clip_hash(clip_dir),
    }


def load_cache(
    path: str | Path, dataset: str, img_size: int, clip_dir: str | Path, seed: int = 0, length: int | None = None
) -> torch.Tensor:
    """The image embeddings of a cache, after checking it was made for this dataset (of ``length`` items,
    when given) and CLIP."""
    path = Path(path)
    if not path.is_file():
        raise BestshotError(f"embedding cache {path} not found — create it with `bestshot train embed`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    want = {"dataset": dataset, "img_size": str(img_size), "seed": str(seed), "clip_hash": clip_hash(clip_dir)}
    bad = [f"{k}: cache {meta.get(k)!r} vs {v!r}" for k, v in want.items() if meta.get(k) != v]
    if bad:
        raise BestshotError(
            f"embedding cache {path} does not match ({'; '.join(bad)}) — rebuild it with `bestshot train embed`"
        )
    embeds = load_file(str(path))["image_embeds"]
    if length is not None and len(embeds) != length:
        raise BestshotError(
            f"embedding cache {path} holds {len(embeds)} images but the dataset has {length} — rebuild "
            f"it with `bestshot train embed` and the same --length"
        )
    return embeds


def describe(path: str | Path) -> str:
    with safe_open(str(path), "pt") as f:
        return jsonio.dumps(f.metadata())
