"""``bestshot train embed``: CLIP image (and optionally text) embeddings of a dataset, cached once.

The seed document's preprocess step: the image_embed DDPM conditions on CLIP image embeddings, which do
not change during training, so they are computed once and reused every epoch. The cache is a safetensors
file whose metadata records the dataset spec, image size, length and a hash of the CLIP weights; a cache
made for another dataset or CLIP is refused (:mod:`bestshot.train.embed_cache`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

# the cache format lives in embed_cache.py (train.ddpm reads caches without importing this module)
from bestshot.train.embed_cache import cache_key, clip_hash, describe, load_cache  # noqa: F401


@torch.no_grad()
def build_cache(
    dataset: str,
    clip_dir: str | Path,
    out: str | Path,
    img_size: int = 32,
    length: int = 10_000,
    seed: int = 0,
    batch_size: int = 256,
    text: bool = False,
    class_caption: str = "",
) -> Path:
    """Embed ``length`` items of ``dataset`` (images loaded at ``img_size``) with the CLIP in ``clip_dir``.

    Images need no captions unless ``text`` is set (then each needs one: a .txt, a CSV column, or its class
    folder through ``class_caption``). Each image is resized, cropped and normalised as the CLIP's own
    processor config says, so a 224-px CLIP embeds 32-px images."""
    from bestshot.models.clip_preprocess import clip_preprocess
    from bestshot.train.data import build_dataset
    from bestshot.train.ddpm import encode_images, encode_text, load_clip

    clip, tok = load_clip(clip_dir)
    pre = clip_preprocess(clip_dir, clip)
    ds = build_dataset(
        dataset, img_size, length, seed, captions="required" if text else "optional", class_caption=class_caption
    )
    imgs, txts = [], []
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, collate_fn=lambda b: (torch.stack([x[0] for x in b]), [x[1] for x in b])
    )
    for x, caps in loader:
        imgs.append(encode_images(clip, x, pre))
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
