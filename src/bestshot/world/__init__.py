"""The procedural world: coloured shapes on plain backgrounds, with exact captions and an oracle.

A domain of its own, used by training (datasets, hard-negative captions), evaluation (``eval world``),
scoring (``+regions`` searches its vocabulary) and interrogation (the world-grammar search). It imports
nothing from the rest of bestshot but :mod:`bestshot.errors`.

- :mod:`.vocabulary` — colours, backgrounds, shapes, sizes, relations
- :mod:`.scenes` — objects, scenes, their random layout, the scene of training item ``i``
- :mod:`.render` — one definition of every shape, rendered by exact area coverage
- :mod:`.captions` — true captions of a scene, prompts parsed back into attributes, the world's prior
- :mod:`.datasets` — the training dataset and the fixed held-out prompts
- :mod:`.oracle` — does this image show what this prompt says? (imported on its own: it needs scipy)
"""

from .captions import ObjSpec, PromptSpec, caption, log_prior, parse_prompt, prompt_for, spec_of
from .datasets import WorldDataset, heldout_prompts, heldout_scenes, image_to_tensor
from .render import CROSS_ARM, SHAPE_AREA, SHAPE_CENTROID_DY, SUPERSAMPLE, coverage, render, shape_inside
from .scenes import GAP, MARGIN, N_OBJECT_WEIGHTS, RELATION_SLOPE, Obj, Scene, sample_scene, scene_for
from .vocabulary import BACKGROUNDS, COLOURS, INVERSE, RELATIONS, SHAPES, SIZE_FRACTION, SIZES

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "CROSS_ARM",
    "GAP",
    "INVERSE",
    "MARGIN",
    "N_OBJECT_WEIGHTS",
    "RELATIONS",
    "RELATION_SLOPE",
    "SHAPES",
    "SHAPE_AREA",
    "SHAPE_CENTROID_DY",
    "SIZES",
    "SIZE_FRACTION",
    "SUPERSAMPLE",
    "Obj",
    "ObjSpec",
    "PromptSpec",
    "Scene",
    "WorldDataset",
    "caption",
    "coverage",
    "heldout_prompts",
    "heldout_scenes",
    "image_to_tensor",
    "log_prior",
    "parse_prompt",
    "prompt_for",
    "render",
    "sample_scene",
    "scene_for",
    "shape_inside",
    "spec_of",
]
