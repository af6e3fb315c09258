"""IP-Adapter through diffusers' ``load_ip_adapter`` / ``set_ip_adapter_scale`` / ``unload_ip_adapter``: an image
prompt beside the text prompt, loaded for one request and unloaded after it (the UNet's attention processors,
image encoder and feature extractor are put back as they were).

``ip_adapter`` is a weights file (its folder holds ``image_encoder/``), a folder holding one weights file (or
h94/IP-Adapter's layout: ``models/<weights>`` + ``models/image_encoder``), or a hub id with
``ip_adapter_weight_name`` (``models/ip-adapter_sd15.safetensors``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import BestshotError
from .image_input import open_image

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def locate(source: str, weight_name: str | None) -> tuple[str, str, str]:
    """(folder or hub id, subfolder, weight file name) for ``load_ip_adapter``; one clear error otherwise."""
    from .hub import is_hub_id, require_hub_model

    path = Path(source).expanduser()
    if path.is_file():
        return str(path.parent), "", path.name
    if path.is_dir():
        if weight_name:
            w = Path(weight_name)
            if not (path / w).is_file():
                raise BestshotError(f"ip_adapter: no {weight_name!r} in {source!r} — check --ip-adapter-weight-name")
            return str(path), w.parent.as_posix() if str(w.parent) != "." else "", w.name
        for sub in ("", "models"):
            found = sorted(p for p in (path / sub).glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
            if len(found) == 1:
                return str(path), sub, found[0].name
            if len(found) > 1:
                raise BestshotError(
                    f"ip_adapter: {source!r} holds several weights ({', '.join(p.name for p in found[:6])}) — "
                    "pick one with --ip-adapter-weight-name"
                )
        raise BestshotError(f"ip_adapter: no .safetensors/.bin IP-Adapter weights in {source!r}")
    if is_hub_id(source):
        if not weight_name:
            raise BestshotError(
                f"ip_adapter {source!r} is a hub id: name its weights file with --ip-adapter-weight-name "
                "(e.g. models/ip-adapter_sd15.safetensors)"
            )
        require_hub_model(source, "IP-Adapter", "pass a local folder instead")
        w = Path(weight_name)
        return source, w.parent.as_posix() if str(w.parent) != "." else "", w.name
    raise BestshotError(f"ip_adapter: {source!r} is no file, folder or hub id — give the IP-Adapter weights")


@contextmanager
def prepared(pipe: Any, cfg: Any, prompt: str, negative: str, seeds: Sequence[int]) -> Iterator[dict[str, Any]]:
    """``ip_adapter_image=`` for the call, with the adapter loaded on ``pipe`` until the block ends."""
    if not cfg.ip_adapter:
        yield {}
        return
    if not hasattr(pipe, "load_ip_adapter") or getattr(pipe, "unet", None) is None:
        raise BestshotError(f"IP-Adapter needs a Stable Diffusion / SDXL pipeline, not {type(pipe).__name__}")
    image = open_image(cfg.ip_image, "ip_image")
    folder, sub, weight = locate(cfg.ip_adapter, cfg.ip_adapter_weight_name)
    processors = dict(pipe.unet.attn_processors)
    kept = {n: getattr(pipe, n, None) for n in ("image_encoder", "feature_extractor")}
    hid = (getattr(pipe.unet, "encoder_hid_proj", None), getattr(pipe.unet.config, "encoder_hid_dim_type", None))
    loaded = False
    try:
        try:
            loaded = True  # a load that fails half-way is unloaded too
            pipe.load_ip_adapter(folder, subfolder=sub, weight_name=weight)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise BestshotError(
                f"IP-Adapter {cfg.ip_adapter!r} could not be loaded ({str(e).splitlines()[0][:200]}) — it needs "
                "image_proj/ip_adapter weights matching this model and an image_encoder folder beside them"
            ) from None
        pipe.set_ip_adapter_scale(float(cfg.ip_scale))
        yield {"ip_adapter_image": image}
    finally:
        if loaded:
            pipe.unload_ip_adapter()
            pipe.unet.encoder_hid_proj = hid[0]
            pipe.unet.config.encoder_hid_dim_type = hid[1]
            pipe.unet.set_attn_processor(processors)
            for name, value in kept.items():
                if hasattr(pipe, name) and getattr(pipe, name, None) is not value:
                    pipe.register_modules(**{name: value})
