"""Any CLIP's own image preprocessing, applied to training tensors.

Training images are float CHW tensors in ``[-1, 1]`` at the dataset's size (e.g. 32 px), while a
standard CLIP expects its own resolution (ViT-B/32: 224 px) and its own normalisation. This module reads
what the CLIP's processor config says — transformers' ``preprocessor_config.json`` (``size``,
``crop_size``, ``image_mean``, ``image_std``, ``do_resize``, ``do_center_crop``, ``do_normalize``) —
and applies the same steps on tensors: resize the short side (bicubic with antialias), centre crop,
normalise. open_clip's hub folders describe the same in ``open_clip_config.json`` (``preprocess_cfg``:
``mean``, ``std``, ``resize_mode``; ``model_cfg.vision_cfg.image_size``), which is read the same way. A CLIP
folder without either gets its vision tower's ``image_size`` and the OpenAI CLIP mean/std, as
transformers' CLIPImageProcessor defaults do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bestshot.errors import BestshotError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _edge(size, what: str) -> tuple[int | None, tuple[int, int] | None]:
    """(shortest_edge, (height, width)) from a processor size entry (int, dict or list)."""
    if size is None:
        return None, None
    if isinstance(size, int):
        return size, None
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return None, (int(size[0]), int(size[1]))
    if isinstance(size, dict):
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), None
        if "height" in size and "width" in size:
            return None, (int(size["height"]), int(size["width"]))
    raise BestshotError(
        f"the CLIP's preprocessor config has an unreadable {what} {size!r} — "
        'write it as {"shortest_edge": N} or {"height": H, "width": W}'
    )


@dataclass(frozen=True)
class ClipPreprocess:
    """Resize (short side, or to an exact height×width), centre crop, normalise — on [-1, 1] tensors."""

    shortest_edge: int | None = 224
    resize_hw: tuple[int, int] | None = None
    crop_hw: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    do_normalize: bool = True
    longest_edge: int | None = None  # open_clip resize_mode "longest": fit the long side, pad the rest

    @classmethod
    def for_size(cls, size: int) -> ClipPreprocess:
        return cls(shortest_edge=size, crop_hw=(size, size))

    @classmethod
    def from_config(cls, conf: dict, image_size: int | None = None) -> ClipPreprocess:
        """From a transformers image-processor config dict (preprocessor_config.json)."""
        edge, hw = _edge(conf.get("size"), "size") if conf.get("do_resize", True) else (None, None)
        _, crop = _edge(conf.get("crop_size"), "crop_size") if conf.get("do_center_crop", True) else (None, None)
        if crop is None and conf.get("do_center_crop", True) and isinstance(conf.get("crop_size"), int):
            crop = (conf["crop_size"],) * 2
        if edge is None and hw is None and image_size and conf.get("do_resize", True):
            edge = image_size
        mean = tuple(float(v) for v in conf.get("image_mean") or OPENAI_CLIP_MEAN)
        std = tuple(float(v) for v in conf.get("image_std") or OPENAI_CLIP_STD)
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise BestshotError(
                f"the CLIP's preprocessor config has image_mean {list(mean)} / image_std {list(std)} — "
                "give three means and three positive standard deviations"
            )
        return cls(
            shortest_edge=edge,
            resize_hw=hw,
            crop_hw=crop,
            mean=mean,
            std=std,
            do_normalize=bool(conf.get("do_normalize", True)),
        )

    @classmethod
    def from_open_clip_config(cls, conf: dict) -> ClipPreprocess:
        """From open_clip's ``open_clip_config.json`` (``model_cfg.vision_cfg.image_size``, ``preprocess_cfg``)."""
        pre = conf.get("preprocess_cfg") or {}
        size = pre.get("size") or (conf.get("model_cfg") or {}).get("vision_cfg", {}).get("image_size") or 224
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        mode = pre.get("resize_mode", "shortest")
        if mode not in ("shortest", "longest", "squash"):
            raise BestshotError(f"open_clip resize_mode {mode!r} is not supported — use shortest, longest or squash")
        mean = tuple(float(v) for v in pre.get("mean") or OPENAI_CLIP_MEAN)
        std = tuple(float(v) for v in pre.get("std") or OPENAI_CLIP_STD)
        if mode == "squash":
            return cls(shortest_edge=None, resize_hw=(h, w), crop_hw=None, mean=mean, std=std)
        if mode == "longest":  # fit inside, then pad to the size (the centre "crop" pads)
            return cls(shortest_edge=None, resize_hw=None, crop_hw=(h, w), mean=mean, std=std, longest_edge=max(h, w))
        return cls(shortest_edge=min(h, w), crop_hw=(h, w), mean=mean, std=std)

    @classmethod
    def from_folder(cls, folder: str | Path, image_size: int | None = None) -> ClipPreprocess:
        """The processor config of a CLIP folder (transformers' or open_clip's), or (neither there) the tower's
        ``image_size`` with CLIP mean/std."""
        for name in ("preprocessor_config.json", "open_clip_config.json"):
            path = Path(folder) / name
            if path.is_file():
                try:
                    conf = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as e:
                    raise BestshotError(f"{path} is not readable JSON ({e}) — fix or delete it") from None
                return cls.from_config(conf, image_size) if name.startswith("pre") else cls.from_open_clip_config(conf)
        if image_size is None:
            raise BestshotError(
                f"{folder} has no preprocessor_config.json and no image size — save the CLIP's "
                "image processor beside its weights"
            )
        return cls.for_size(image_size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (B, 3, H, W) → the CLIP's pixel_values."""
        x = (images.float() + 1) / 2
        h, w = x.shape[-2:]
        if self.resize_hw is not None:
            size = self.resize_hw
        elif self.longest_edge is not None:
            s = self.longest_edge
            size = (max(1, int(h * s / w)), s) if w >= h else (s, max(1, int(w * s / h)))
        elif self.shortest_edge is not None:
            s = self.shortest_edge
            size = (s, max(1, int(w * s / h))) if h <= w else (max(1, int(h * s / w)), s)
        else:
            size = (h, w)
        if size != (h, w):
            # bicubic with antialias: PIL's bicubic when shrinking, as CLIPImageProcessor does
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        if self.crop_hw is not None:
            ch, cw = self.crop_hw
            h, w = x.shape[-2:]
            if ch > h or cw > w:  # the processor pads with zeros; a bigger crop than the image
                x = F.pad(
                    x, ((max(0, cw - w) + 1) // 2, max(0, cw - w) // 2, (max(0, ch - h) + 1) // 2, max(0, ch - h) // 2)
                )
                h, w = x.shape[-2:]
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top : top + ch, left : left + cw]
        if self.do_normalize:
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x


def clip_preprocess(folder: str | Path | None, clip) -> ClipPreprocess:
    """The preprocessing of a transformers CLIPModel loaded from ``folder`` (None: from its config only)."""
    size = int(clip.config.vision_config.image_size)
    return ClipPreprocess.from_folder(folder, size) if folder else ClipPreprocess.for_size(size)
