"""World datasets: training items that depend only on ``(seed, i)``, and the fixed held-out prompts."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .captions import caption
from .render import render
from .scenes import Scene, _item_rng, sample_scene, scene_for


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float CHW in [-1, 1] (the convention of every bestshot training dataset)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0)


class WorldDataset(torch.utils.data.Dataset):
    """``length`` procedurally generated (image, caption) pairs; item i depends only on (seed, i)."""

    def __init__(self, length: int, size: int = 64, seed: int = 0, max_objects: int = 3, min_objects: int = 1):
        if length < 0:
            raise ValueError("length must be >= 0")
        self.length, self.size, self.seed = length, size, seed
        self.max_objects, self.min_objects = max_objects, min_objects

    def __len__(self) -> int:
        return self.length

    def scene(self, i: int) -> Scene:
        return scene_for(self.seed, i, self.max_objects, self.min_objects)[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        scene, rng = scene_for(self.seed, i, self.max_objects, self.min_objects)
        return image_to_tensor(render(scene, self.size)), caption(scene, rng)


def heldout_scenes(n: int = 200, seed: int = 12345, n_objects: int | None = None) -> list[tuple[Scene, str]]:
    """The fixed held-out (scene, prompt) pairs behind :func:`heldout_prompts`."""
    out = []
    for i in range(n):
        rng = _item_rng("heldout", seed, i)
        scene = sample_scene(rng, n_objects=n_objects)
        out.append((scene, caption(scene, rng, require_relation=True)))
    return out


def heldout_prompts(n: int = 200, seed: int = 12345, n_objects: int | None = None) -> list[str]:
    """A fixed set of evaluation prompts, drawn from an rng namespace disjoint from training items.

    Two-object prompts always state their relation so that ``position`` is really tested.
    """
    return [p for _, p in heldout_scenes(n, seed, n_objects)]
