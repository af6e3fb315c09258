"""The embedded pipeline on torch alone: :func:`load_lite` reads a ``BestshotWorldPipeline`` folder into a
:class:`LitePipeline` (the folder's safetensors, memory-mapped, each read once), or returns None when the
folder holds something the torch-only modules do not rebuild (the loader then uses diffusers)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..batch_invariance import rowwise_linears
from ..world_sampling import CONDITIONINGS, WorldSampling, check_guidance
from .unet import Config, Unsupported

# model_index.json entries these modules rebuild (library, class)
_COMPONENTS = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "scheduler": ("diffusers", "DDIMScheduler"),
    "clip": ("transformers", "CLIPModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
}


@dataclass
class LiteOutput:
    images: Any

    def __getitem__(self, i: int) -> Any:
        return (self.images,)[i]


class LitePipeline(WorldSampling):
    """``BestshotWorldPipeline`` without diffusers: the same sampling (:class:`WorldSampling`) on the
    torch-only UNet, CLIP, tokenizer and DDIM of :mod:`bestshot.models.lite`."""

    def __init__(self, unet, scheduler, clip, tokenizer, config: dict[str, Any], processor: Any = None):
        if config.get("conditioning", "text_tokens") not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {config.get('conditioning')!r}")
        self.unet, self.scheduler, self.clip, self.tokenizer = unet.eval(), scheduler, clip.eval(), tokenizer
        self.config = Config(
            {
                "conditioning": "text_tokens",
                "spatial_guidance_scale": 0.0,
                "spatial_guidance_end": 1.0,
                "spatial_guidance_every": 1,
                **config,
            }
        )
        check_guidance(
            self.config.spatial_guidance_scale, self.config.spatial_guidance_end, self.config.spatial_guidance_every
        )
        self.clip_processor = processor  # the CLIP's image preprocessing, for scoring with this pipeline's own CLIP
        self._progress: dict[str, Any] = {}
        rowwise_linears(unet, clip)

    def register_to_config(self, **kwargs: Any) -> None:
        """Change settings of the sampling (e.g. the spatial guidance), as DiffusionPipeline's method does."""
        cfg = Config({**self.config, **kwargs})
        check_guidance(cfg.spatial_guidance_scale, cfg.spatial_guidance_end, cfg.spatial_guidance_every)
        self.config = cfg

    # what DiffusionPipeline provides and the sampling uses
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    _execution_device = device

    @property
    def components(self) -> dict[str, Any]:
        return {"unet": self.unet, "scheduler": self.scheduler, "clip": self.clip, "tokenizer": self.tokenizer}

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> LitePipeline:
        for m in (self.unet, self.clip):
            m.to(device=device, dtype=dtype)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._progress.update(kwargs)

    def progress_bar(self, iterable):
        if self._progress.get("disable"):
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, **self._progress)

    def maybe_free_model_hooks(self) -> None:
        pass

    def _output(self, images):
        return LiteOutput(images)


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Modules built without random initialisation (their weights are loaded next). Not the meta device: its
    first use imports torch._dynamo, seconds of a cold start."""
    from torch.nn import init

    names = ("uniform_", "normal_", "kaiming_uniform_", "ones_", "zeros_", "trunc_normal_")
    saved = {n: getattr(init, n) for n in names}
    for n in names:
        setattr(init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


def _tensors(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.to(dtype) for k, v in load_file(str(path)).items()}


def _load(module: torch.nn.Module, path: Path, dtype: torch.dtype) -> torch.nn.Module:
    state = _tensors(path, dtype)
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)  # the file's tensors, not a copy
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise Unsupported(f"{path.name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return module.to(dtype)


def load_lite(folder: str | Path, dtype: torch.dtype = torch.float32, device: Any = "cpu") -> LitePipeline | None:
    """The pipeline in ``folder`` on torch alone, or None when the folder names a component, configuration or
    file these modules do not rebuild (``Unsupported``)."""
    from .clip import ImageProcessor, LiteCLIP
    from .ddim import DDIMScheduler
    from .tokenizer import LiteTokenizer
    from .unet import LiteUNet

    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text())
        if index.get("_class_name") != "BestshotWorldPipeline" or any(
            tuple(index.get(k) or ()) != v for k, v in _COMPONENTS.items()
        ):
            return None
        files = {
            "unet": folder / "unet" / "diffusion_pytorch_model.safetensors",
            "clip": folder / "clip" / "model.safetensors",
            "tokenizer": folder / "tokenizer" / "tokenizer.json",
        }
        if not all(f.is_file() for f in files.values()):
            return None
        read = lambda *p: json.loads((folder.joinpath(*p)).read_text())  # noqa: E731
        with _no_init():  # every parameter is then read from the file (_load checks)
            unet = LiteUNet(read("unet", "config.json"))
            clip = LiteCLIP(read("clip", "config.json"), name_or_path=str(folder / "clip"))
        _load(unet, files["unet"], dtype)
        _load(clip, files["clip"], dtype)
        sched_cfg = {k: v for k, v in read("scheduler", "scheduler_config.json").items() if not k.startswith("_")}
        scheduler = DDIMScheduler(**sched_cfg)
        tokenizer = LiteTokenizer(folder / "tokenizer")
        proc_file = folder / "clip" / "preprocessor_config.json"
        processor = ImageProcessor(
            json.loads(proc_file.read_text())
            if proc_file.is_file()
            else {
                "size": {"shortest_edge": clip.config.vision_config.image_size},
                "crop_size": {
                    "height": clip.config.vision_config.image_size,
                    "width": clip.config.vision_config.image_size,
                },
            }
        )
    except Unsupported:
        return None
    config = {k: v for k, v in index.items() if not k.startswith("_") and k not in _COMPONENTS}
    pipe = LitePipeline(unet, scheduler, clip, tokenizer, config, processor)
    return pipe.to(device)
