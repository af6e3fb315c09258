"""ControlNet through diffusers' own classes: ``ControlNetModel`` weights, and the loaded pipeline re-wrapped
as ``StableDiffusion(XL)ControlNetPipeline.from_pipe`` (same components, no copy) for the draw.

Models are found by name in ``controlnet_dir`` (default ``models/ControlNet`` beside the output folder: one
diffusers ControlNet folder per model, ``config.json`` + weights), as a folder path, or as a hub id. Several
models make a MultiControlNet. Control images go through a weight-free preprocessor
(:mod:`bestshot.models.control_preprocess`) after being fitted to the output size.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from ..errors import BestshotError
from . import control_preprocess
from .image_input import open_image

DEFAULT_DIR = Path("models") / "ControlNet"
_CACHE: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_CACHE_SIZE = 4
_HASH = re.compile(r"\s*\[[0-9a-fA-F]{6,}\]$")  # sd-webui-controlnet names: "control_v11p_sd15_canny [d14c016b]"


def models_dir(cfg: Any) -> Path:
    """The ControlNet folder of ``cfg``: ``controlnet_dir``, else models/ControlNet beside the output folder."""
    return Path(cfg.controlnet_dir) if cfg.controlnet_dir else Path(cfg.out_dir).parent / DEFAULT_DIR


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / f).is_file()
        for f in (
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.bin",
            "diffusion_pytorch_model.fp16.safetensors",
        )
    )


def list_models(folder: Path) -> list[str]:
    """Names of the diffusers ControlNet folders in ``folder`` (sorted; none when it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and is_model_folder(p))


def clean_name(name: str) -> str:
    """A model name without sd-webui-controlnet's `` [hash]`` suffix."""
    return _HASH.sub("", str(name).strip())


def resolve(name: str, folder: Path) -> str:
    """The folder or hub id a ControlNet name means; one clear error when there is none."""
    from .hub import is_hub_id, require_hub_model

    clean = clean_name(name)
    for cand in (Path(clean).expanduser(), folder / clean):
        if cand.is_dir():
            if not is_model_folder(cand):
                raise BestshotError(
                    f"ControlNet folder {str(cand)!r} has no config.json with diffusion_pytorch_model weights — "
                    "give a diffusers ControlNet folder (save_pretrained layout)"
                )
            return str(cand)
    if Path(clean).suffix in (".safetensors", ".pth", ".ckpt", ".bin"):
        raise BestshotError(
            f"ControlNet {clean!r}: single-file checkpoints are not loaded — give a diffusers ControlNet folder "
            f"(config.json + weights) in {str(folder)!r}"
        )
    if is_hub_id(clean):
        require_hub_model(clean, "ControlNet model", f"put its diffusers folder in {str(folder)!r}")
        return clean
    have = ", ".join(list_models(folder)) or "none"
    raise BestshotError(
        f"ControlNet model {clean!r} not found in {str(folder)!r} (there: {have}) — give a diffusers ControlNet "
        "folder, a hub id, or set controlnet_dir"
    )


def load(source: str, dtype: Any, device: Any) -> Any:
    """A ``ControlNetModel`` (cached: the last few stay loaded)."""
    from diffusers import ControlNetModel

    key = (source, str(dtype), str(device))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    try:
        net = ControlNetModel.from_pretrained(source, torch_dtype=dtype).to(device)
    except (OSError, ValueError) as e:
        raise BestshotError(f"ControlNet {source!r} could not be loaded: {str(e).splitlines()[0][:200]}") from None
    _CACHE[key] = net.eval()
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return net


def fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """``image`` at the output size: crop (cover, centre-cut), resize (stretch) or fill (fit, pad black)."""
    if mode == "resize":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if mode == "fill":
        return ImageOps.pad(image, (width, height), Image.Resampling.LANCZOS, color=(0, 0, 0))
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)


def control_image(ref: str, module: str, cfg: Any, index: int = 0) -> Image.Image:
    """Control image ``ref`` fitted to the output size and run through preprocessor ``module``."""
    img = open_image(ref, f"control_images[{index}]")
    return control_preprocess.run(module, fit(img, cfg.width, cfg.height, cfg.control_resize))


def pipeline_class(pipe: Any) -> Any:
    import diffusers

    if isinstance(pipe, diffusers.StableDiffusionXLPipeline):
        return diffusers.StableDiffusionXLControlNetPipeline
    if isinstance(pipe, diffusers.StableDiffusionPipeline):
        return diffusers.StableDiffusionControlNetPipeline
    raise BestshotError(
        f"ControlNet works with Stable Diffusion 1.x/2.x and SDXL pipelines, not {type(pipe).__name__} — "
        "drop --controlnet or use such a model"
    )


def _from_pipe(cls: Any, pipe: Any, nets: Any) -> Any:
    """``cls.from_pipe`` sharing ``pipe``'s modules. from_pipe casts every module to one dtype (float32 unless
    told), which would change the shared modules of ``pipe`` too: it is told the UNet's, and any module of
    ``pipe`` it changed anyway (a VAE kept in float32) is cast back."""
    import torch

    dtypes = {k: m.dtype for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    new = cls.from_pipe(pipe, controlnet=nets, torch_dtype=pipe.unet.dtype)
    for k, dt in dtypes.items():
        module = getattr(pipe, k, None)
        if module is not None and module.dtype != dt:
            module.to(dt)
    return new


def _each(values: Sequence[float], n: int, default: float) -> list[float]:
    return [float(v) for v in (values if len(values) == n else list(values) * n if values else [default] * n)]


@contextmanager
def prepared(pipe: Any, cfg: Any, prompt: str, negative: str, seeds: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The ControlNet pipeline (``pipe`` key: the pipeline to call) and its kwargs; ``pipe`` itself is left as
    it was (``from_pipe`` shares its modules)."""
    n = len(cfg.controlnets)
    if not n:
        yield {}
        return
    cls = pipeline_class(pipe)
    folder = models_dir(cfg)
    modules = list(cfg.control_modules) * n if len(cfg.control_modules) == 1 else list(cfg.control_modules)
    images = [control_image(ref, (modules or ["none"] * n)[i], cfg, i) for i, ref in enumerate(cfg.control_images)]
    nets = [load(resolve(m, folder), pipe.unet.dtype, pipe.unet.device) for m in cfg.controlnets]
    cn_pipe = _from_pipe(cls, pipe, nets[0] if n == 1 else nets)
    cn_pipe.set_progress_bar_config(disable=True)
    scales = _each(cfg.control_scales, n, 1.0)
    start, end = _each(cfg.control_start, n, 0.0), _each(cfg.control_end, n, 1.0)
    one = n == 1
    yield {
        "pipe": cn_pipe,
        "image": images[0] if one else images,
        "controlnet_conditioning_scale": scales[0] if one else scales,
        "control_guidance_start": start[0] if one else start,
        "control_guidance_end": end[0] if one else end,
    }
