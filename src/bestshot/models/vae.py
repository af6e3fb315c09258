"""A custom VAE for one request: ``AutoencoderKL`` from a diffusers folder, a single ``.safetensors`` file
(``from_single_file``, with the pipeline's own VAE config, so nothing is fetched) or a hub id, swapped into the
pipeline for the call and the model's own VAE put back after.

Names are looked up in ``vae_dir`` (default ``models/VAE`` beside the output folder), which
``GET /sdapi/v1/sd-vae`` lists in A1111's shape. ``"Automatic"`` / ``"None"`` (A1111's ``sd_vae`` values) mean the
model's own VAE.
"""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import BestshotError

DEFAULT_DIR = Path("models") / "VAE"
OWN = ("automatic", "none", "")  # A1111's sd_vae values for "the checkpoint's own VAE"
FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
_CACHE: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_CACHE_SIZE = 2


def vae_dir(cfg: Any) -> Path:
    return Path(cfg.vae_dir) if cfg.vae_dir else Path(cfg.out_dir).parent / DEFAULT_DIR


def list_vaes(folder: Path) -> list[dict[str, str]]:
    """A1111's /sdapi/v1/sd-vae items for ``folder``: single files and diffusers VAE folders."""
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if (p.is_file() and p.suffix in FILE_SUFFIXES) or (p.is_dir() and (p / "config.json").is_file()):
            out.append({"model_name": p.name, "filename": str(p)})
    return out


def is_own(name: str | None) -> bool:
    return name is None or str(name).strip().lower() in OWN


def resolve(name: str, folder: Path) -> str:
    """The file, folder or hub id a VAE name means; one clear error when there is none."""
    from .hub import is_hub_id, require_hub_model

    for cand in (Path(name).expanduser(), folder / name):
        if cand.is_dir() and (cand / "config.json").is_file():
            return str(cand)
        if cand.is_file() and cand.suffix == ".safetensors":
            return str(cand)
        if cand.exists():
            raise BestshotError(
                f"VAE {str(cand)!r} is neither a diffusers VAE folder (config.json + weights) nor a .safetensors file"
            )
    if is_hub_id(name):
        require_hub_model(name, "VAE", f"put it in {str(folder)!r}")
        return name
    have = ", ".join(v["model_name"] for v in list_vaes(folder)) or "none"
    raise BestshotError(
        f"VAE {name!r} not found in {str(folder)!r} (there: {have}) — give a VAE folder, .safetensors file or hub id"
    )


def load(source: str, like: Any) -> Any:
    """An ``AutoencoderKL`` from ``source`` with the dtype and device of ``like`` (the model's own VAE)."""
    from diffusers import AutoencoderKL

    key = (source, str(like.dtype), str(like.device))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    try:
        if Path(source).is_file():  # the model's own VAE config: nothing is fetched for a single file
            with tempfile.TemporaryDirectory() as conf:
                like.save_config(conf)
                vae = AutoencoderKL.from_single_file(source, config=conf, torch_dtype=like.dtype)
        else:
            vae = AutoencoderKL.from_pretrained(source, torch_dtype=like.dtype)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise BestshotError(f"VAE {source!r} could not be loaded: {str(e).splitlines()[0][:200]}") from None
    vae = vae.to(like.device).eval()
    if vae.config.latent_channels != like.config.latent_channels:
        raise BestshotError(
            f"VAE {source!r} has {vae.config.latent_channels} latent channels, the model's own "
            f"{like.config.latent_channels} — pick a VAE made for this model family"
        )
    _CACHE[key] = vae
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return vae


@contextmanager
def prepared(pipe: Any, cfg: Any, prompt: str, negative: str, seeds: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The pipeline with ``cfg.vae`` swapped in until the block ends (no extra kwargs)."""
    if is_own(cfg.vae):
        yield {}
        return
    own = getattr(pipe, "vae", None)
    if own is None:
        raise BestshotError(f"{type(pipe).__name__} has no VAE to replace — drop --vae")
    from .loader import apply_vae_options

    custom = load(resolve(str(cfg.vae).strip(), vae_dir(cfg)), own)
    pipe.vae = custom
    try:
        apply_vae_options(pipe, cfg.vae_tiling, cfg.vae_slicing)
        yield {}
    finally:
        pipe.vae = own
