"""The one model loader every bestshot job uses.

``load_pipeline`` turns a model reference (``embedded``, a local folder, a hub id) into a ready
diffusers pipeline on the right device, with the requested dtype, scheduler and memory strategy.
Loaded pipelines live in a small cache (the only global state in bestshot); loading a model of
another family unloads the others first and frees GPU memory, so switching SDXL → SD 3.5 does not
need two models' worth of VRAM.
"""

from __future__ import annotations

import gc
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import BestshotError
from ..schedulers import scheduler_spec
from .registry import ModelRef, resolve_model

log = logging.getLogger(__name__)


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BestshotError(f"device {device!r} asked for, but CUDA is not available — use --device cpu")
    return dev


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """The dtype keyword for a diffusers ``from_pretrained``: ``dtype`` where diffusers has it (it deprecated
    ``torch_dtype`` in mid-2026, following transformers), ``torch_dtype`` on the older releases we support."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def resolve_dtype(dtype: str, device: torch.device, family: str = "") -> torch.dtype:
    """``auto``: fp32 on CPU; bf16 for SD 3.x on GPU (its transformer overflows in fp16); fp16 otherwise."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if family == "sd3" else torch.float16
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def _pipeline_class(name: str):
    if name == "BestshotWorldPipeline":
        from .world_pipeline import BestshotWorldPipeline

        return BestshotWorldPipeline
    import diffusers

    return getattr(diffusers, name)


@dataclass
class _Entry:
    pipe: Any
    family: str
    scheduler: Any = None  # the pipeline's own scheduler, restored when a call names none


@dataclass
class ModelCache:
    """Pipelines and scorers kept warm between calls, keyed by everything that changes them."""

    pipelines: dict[tuple, _Entry] = field(default_factory=dict)
    scorers: dict[tuple, Any] = field(default_factory=dict)
    layouts: dict[str, Any] = field(default_factory=dict)  # prompt → its planned layout (prompts.regions), bounded

    def unload_other_families(self, family: str) -> None:
        stale = [k for k, e in self.pipelines.items() if _family_group(e.family) != _family_group(family)]
        for k in stale:
            log.info("unloading %s to make room for a %s model", k[0], family)
            del self.pipelines[k]
        if stale:
            free_memory()

    def clear(self) -> None:
        self.pipelines.clear()
        self.scorers.clear()
        self.layouts.clear()
        free_memory()


def _family_group(family: str) -> str:
    # a refiner belongs with its base: keep both loaded together
    return "sdxl" if family.startswith("sdxl") else family


CACHE = ModelCache()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load_lite(ref: ModelRef, dtype: torch.dtype, device: torch.device, memory: str, compile: bool) -> Any:
    """An embedded-family folder on torch alone (:mod:`bestshot.models.lite`: no diffusers or transformers
    import, the same images), or None where it does not apply: another family, model offloading on CUDA,
    ``compile``, ``BESTSHOT_LITE=0``, or a folder holding what those modules do not rebuild."""
    import os

    if ref.family.pipeline_class != "BestshotWorldPipeline" or not ref.local or compile:
        return None
    if (device.type == "cuda" and memory != "gpu") or os.environ.get("BESTSHOT_LITE", "1") == "0":
        return None
    from .lite.pipeline import load_lite

    return load_lite(ref.source, dtype=dtype, device="cpu")


def _from_pretrained(cls, source: str, ref: ModelRef, **kwargs):
    from .hub import require_model

    require_model(ref)  # an uncached hub id offline: one clear error now, not minutes of hub retries
    try:
        return cls.from_pretrained(source, **kwargs)
    except BestshotError:
        raise
    except (OSError, ValueError) as e:
        if not ref.local:
            raise BestshotError(
                f"could not load {source!r}: it is not a local folder and not in the Hugging Face cache "
                f"(no network?) — download it first (`huggingface-cli download {source}`) or pass a local "
                f"pipeline folder [{type(e).__name__}: {str(e).splitlines()[0][:200]}]"
            ) from None
        raise BestshotError(
            f"could not load the pipeline in {source!r}: {str(e).splitlines()[0][:300]} — check the folder "
            "was written by save_pretrained and is complete"
        ) from None


def _absent_components(ref: ModelRef) -> dict[str, None]:
    """Components saved as ``[null, null]`` (e.g. SD 3.x without its T5 encoder) must be passed as None."""
    if not ref.local:
        return {}
    import json
    from pathlib import Path

    index = json.loads((Path(ref.source) / "model_index.json").read_text())
    return {
        k: None
        for k, v in index.items()
        if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is None and v[1] is None
    }


def build_scheduler(base: Any, name: str) -> Any:
    """A fresh scheduler named ``name`` ("dpmpp_2m", "DPM++ 2M Karras", "unipc:exponential"...), built from
    ``base`` — the model's ORIGINAL scheduler, kept at load time — so nothing a previous call chose (e.g.
    Karras sigmas) leaks into this one. Keyword arguments the class does not take are dropped."""
    import inspect

    spec = scheduler_spec(name)
    current = type(base).__name__
    flow_now = "FlowMatch" in current
    if flow_now != spec.sampler.flow:
        raise BestshotError(
            f"scheduler {name!r} does not fit this model ({current} is "
            f"{'flow matching' if flow_now else 'noise prediction'}) — "
            f"{'use flow_euler' if flow_now else 'pick e.g. euler, euler_a, dpmpp_2m or ddim'}"
        )
    if type(base).__name__ == spec.sampler.cls:  # the same class (e.g. the torch-only DDIM): no diffusers import
        cls = type(base)
    else:
        import diffusers

        cls = getattr(diffusers, spec.sampler.cls)
    accepted = set(inspect.signature(cls.__init__).parameters)
    kwargs = {k: v for k, v in spec.kwargs().items() if k in accepted}
    sched = cls.from_config(dict(base.config), **kwargs)
    sched._bestshot_label = spec.label
    sched._bestshot_notes = spec.notes() + [
        f"{k}={v} does not apply to {spec.sampler.cls}; ignored" for k, v in spec.kwargs().items() if k not in accepted
    ]
    return sched


def set_scheduler(pipe: Any, name: str | None, base: Any = None) -> None:
    """Give ``pipe`` the named scheduler, built from ``base`` (the model's original scheduler; default: the
    pipeline's current one — pass the original to stay reproducible, as load_pipeline does)."""
    if not name:
        return
    pipe.scheduler = build_scheduler(base if base is not None else pipe.scheduler, name)


def apply_memory_strategy(pipe: Any, memory: str, device: torch.device) -> Any:
    """``gpu``: everything on the device. ``model_offload``: whole models move to the GPU in turn.
    ``sequential_offload``: sub-modules stream to the GPU (slowest, least memory)."""
    if device.type != "cuda" or memory == "gpu":
        if memory != "gpu":
            warnings.warn(f"memory strategy {memory!r} only applies on CUDA; running everything on {device}")
        return pipe.to(device)
    if memory == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif memory == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=device)
    return pipe


def decode_vae_in_fp16(pipe: Any) -> bool:
    """Decode with the fp16 VAE instead of the fp32 upcast the SDXL VAE config asks for (``force_upcast``).

    The upcast makes every decode run in fp32 (4 images at 1024² take ~3x as long as in fp16). Some VAEs
    (the original SDXL VAE among them) overflow in fp16 on real latents, so each fp16 decode is checked: a
    non-finite value redoes that decode in fp32, and from then on this VAE is decoded in fp32 as its config
    asked. Returns whether the fp16 path was installed (only for an fp16 VAE that asked for the upcast).
    """
    vae = getattr(pipe, "vae", None)
    if vae is None or vae.dtype != torch.float16 or not getattr(vae.config, "force_upcast", False):
        return False
    decode = vae.decode

    def checked_decode(z, *args, **kwargs):
        out = decode(z, *args, **kwargs)
        sample = out[0] if isinstance(out, tuple) else out.sample
        if bool(torch.isfinite(sample).all()):
            return out
        warnings.warn("the VAE overflowed in float16; decoding in float32 from now on (as its config asks)")
        del vae.decode  # back to the class method, and the pipeline's own upcast from now on
        vae.register_to_config(force_upcast=True)
        vae.to(torch.float32)
        try:
            out = decode(z.float(), *args, **kwargs)
        finally:
            vae.to(torch.float16)
        return out

    vae.register_to_config(force_upcast=False)
    vae.decode = checked_decode
    return True


def compile_pipeline(pipe: Any) -> None:
    """Regional compilation of the denoiser (short compile time); no-op off CUDA.

    Inductor keeps what it compiled on disk (``TORCHINDUCTOR_CACHE_DIR``; bestshot points it at
    ``~/.cache/bestshot/inductor`` unless set), so the compile is paid once per machine and later
    processes load the kernels from there."""
    if not torch.cuda.is_available():
        warnings.warn("compile=True ignored: torch.compile only pays off on CUDA here")
        return
    import os
    from pathlib import Path

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "bestshot" / "inductor"))
    den = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if den is None:
        return
    if hasattr(den, "compile_repeated_blocks"):
        try:
            den.compile_repeated_blocks(fullgraph=True)
            return
        except (ValueError, AttributeError, NotImplementedError):
            pass
    pipe_attr = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    setattr(pipe, pipe_attr, torch.compile(den))


def apply_vae_options(pipe: Any, tiling: bool = False, slicing: bool = False) -> Any:
    """Switch the pipeline's VAE decode to tiles (large images: memory bounded by the tile, not the image)
    and/or to one image of the batch at a time, or back. Set on every call, since cached pipelines are
    shared; a pipeline without a VAE (the embedded pixel-space model) only warns when asked for either."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling"):
        if tiling or slicing:
            warnings.warn(f"{type(pipe).__name__} has no VAE: vae_tiling / vae_slicing ignored")
        return pipe
    vae.enable_tiling() if tiling else vae.disable_tiling()
    if hasattr(vae, "enable_slicing"):
        vae.enable_slicing() if slicing else vae.disable_slicing()
    return pipe


def load_pipeline(
    model: str | None,
    *,
    dtype: str = "auto",
    device: str | None = None,
    memory: str = "gpu",
    scheduler: str | None = None,
    compile: bool = False,
    vae_fp16: bool | None = None,
    vae_tiling: bool = False,
    vae_slicing: bool = False,
    cache: ModelCache = CACHE,
) -> Any:
    """Load (or fetch from the cache) the text-to-image pipeline for ``model``.

    ``vae_fp16``: decode with the fp16 VAE even where its config asks for an fp32 upcast, checked and
    retried in fp32 on overflow (:func:`decode_vae_in_fp16`); None = on wherever the pipeline runs in fp16.
    ``vae_tiling`` / ``vae_slicing`` set its VAE's tiled / sliced decoding for this call (see
    :func:`apply_vae_options`).
    """
    ref = resolve_model(model)
    dev = resolve_device(device)
    tdt = resolve_dtype(dtype, dev, ref.family.name)
    vae_fp16 = tdt == torch.float16 if vae_fp16 is None else bool(vae_fp16)
    key = (ref.source, str(tdt), str(dev), memory, bool(compile), vae_fp16)
    entry = cache.pipelines.get(key)
    if entry is None:
        cache.unload_other_families(ref.family.name)
        pipe = _load_lite(ref, tdt, dev, memory, compile)
        if pipe is None:
            cls = _pipeline_class(ref.family.pipeline_class)
            kwargs: dict[str, Any] = {**dtype_kwargs(tdt), **_absent_components(ref)}
            if ref.family.name == "sdxl" and tdt == torch.float16 and not ref.local:
                kwargs.update(variant="fp16", use_safetensors=True)
            pipe = _from_pretrained(cls, ref.source, ref, **kwargs)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        pipe = apply_memory_strategy(pipe, memory, dev)
        if vae_fp16:
            decode_vae_in_fp16(pipe)
        if compile:
            compile_pipeline(pipe)
        entry = _Entry(pipe, ref.family.name, pipe.scheduler)
        cache.pipelines[key] = entry
    if scheduler:
        set_scheduler(entry.pipe, scheduler, base=entry.scheduler)
    elif entry.scheduler is not None:
        entry.pipe.scheduler = entry.scheduler  # a cached pipeline never keeps another call's scheduler
    apply_vae_options(entry.pipe, vae_tiling, vae_slicing)
    return entry.pipe


def load_refiner(
    base: Any,
    model: str,
    *,
    dtype: str = "auto",
    device: str | None = None,
    memory: str = "gpu",
    cache: ModelCache = CACHE,
) -> Any:
    """The SDXL refiner, sharing the base's second text encoder and VAE (as diffusers' docs do)."""
    ref = resolve_model(model)
    dev = resolve_device(device)
    tdt = resolve_dtype(dtype, dev, "sdxl")
    key = (ref.source, str(tdt), str(dev), memory, "refiner", id(base))
    entry = cache.pipelines.get(key)
    if entry is None:
        import diffusers

        kwargs: dict[str, Any] = dtype_kwargs(tdt)
        shared = {n: getattr(base, n) for n in ("text_encoder_2", "vae") if getattr(base, n, None) is not None}
        kwargs.update(shared)
        if tdt == torch.float16 and not ref.local:
            kwargs.update(variant="fp16", use_safetensors=True)
        pipe = _from_pretrained(diffusers.StableDiffusionXLImg2ImgPipeline, ref.source, ref, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        pipe = apply_memory_strategy(pipe, memory, dev)
        entry = _Entry(pipe, "sdxl_refiner")
        cache.pipelines[key] = entry
    return entry.pipe
