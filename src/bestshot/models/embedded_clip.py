"""The embedded model's CLIP: preprocessing and the projected image / text features it is read with.

The embedded pipeline (:mod:`bestshot.models.world_pipeline`) steers its samples with these features,
``bestshot train clip`` trains them, and ``bestshot train ddpm`` conditions on them; they live here, beside
the model that uses them at run time, so the runtime model never imports the training package.
"""

from __future__ import annotations

from typing import Any

import torch

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def image_processor(size: int):
    """Preprocessor matching how the model was trained: resize the short side to ``size``, CLIP mean/std.

    The centre crop only matters for non-square images (training images are square, where it crops
    nothing); without it a 64×48 photo would reach the vision tower as 43×32 and fail."""
    try:  # the PIL backend: the default one needs torchvision, which is not importable here
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_center_crop=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        resample=3,
    )


def to_clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] training images → CLIP-normalised pixel_values (what CLIPImageProcessor produces)."""
    x = (images + 1) / 2
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def image_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image embedding (explicit, because get_image_features' return type changed across versions)."""
    return model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)


def text_features(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Projected text embedding (pooled at the first end-of-text token)."""
    return model.text_projection(model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
