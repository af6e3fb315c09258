"""``bestshot train embed``: CLIP image (and optionally text) embeddings of a dataset, cached once.

The seed document's preprocess step: the image_embed DDPM conditions on CLIP image embeddings, which do
not change during training, so they are computed once and reused every epoch. The cache is a safetensors
file whose metadata records the dataset spec, image size, length and a hash of the CLIP weights; a cache
made for another dataset or CLIP is refused.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

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
    return {"dataset": dataset, "img_size": str(img_size), "length": str(length), "seed": str(seed),
            "clip_hash": clip_hash(clip_dir)}


@torch.no_grad()
def build_cache(dataset: str, clip_dir: str | Path, out: str | Path, img_size: int = 32, length: int = 10_000,
                seed: int = 0, batch_size: int = 256, text: bool = False) -> Path:
    from bestshot.train.data import build_dataset
    from bestshot.train.ddpm import encode_images, encode_text, load_clip

    clip, tok = load_clip(clip_dir)
    ds = build_dataset(dataset, img_size, length, seed)
    imgs, txts = [], []
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=lambda b: (torch.stack([x[0] for x in b]), [x[1] for x in b]))
    for x, caps in loader:
        imgs.append(encode_images(clip, x))
        if text:
            txts.append(encode_text(clip, tok, caps, "text_embed")[1])
    tensors = {"image_embeds": torch.cat(imgs).contiguous()}
    if text:
        tensors["text_embeds"] = torch.cat(txts).contiguous()
    meta = cache_key(dataset, img_size, len(ds), clip_dir, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return out


def load_cache(path: str | Path, dataset: str, img_size: int, clip_dir: str | Path, seed: int = 0) -> torch.Tensor:
    """The image embeddings of a cache, after checking it was made for this dataset and CLIP."""
    path = Path(path)
    if not path.is_file():
        raise BestshotError(f"embedding cache {path} not found — create it with `bestshot train embed`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    want = {"dataset": dataset, "img_size": str(img_size), "seed": str(seed), "clip_hash": clip_hash(clip_dir)}
    bad = [f"{k}: cache {meta.get(k)!r} vs {v!r}" for k, v in want.items() if meta.get(k) != v]
    if bad:
        raise BestshotError(f"embedding cache {path} does not match ({'; '.join(bad)}) — rebuild it with `bestshot train embed`")
    return load_file(str(path))["image_embeds"]


def describe(path: str | Path) -> str:
    with safe_open(str(path), "pt") as f:
        return jsonio.dumps(f.metadata())
