"""LoRAs for a generate call: found by file or name, checked against the model, applied for one draw only.

``cfg.loras`` holds ``FILE_OR_NAME[:WEIGHT]`` entries (``--lora``, and the prompt's ``<lora:name:weight>`` tags,
which :mod:`bestshot.prompts.extra_networks` moves there). A name is a file stem in the LoRA folder
(``cfg.lora_dir``, default ``models/Lora`` beside the output folder, searched recursively, as A1111's
``models/Lora``). A ``.txt`` beside the file holds comma-separated trigger words.

:func:`prepared` loads the adapters through diffusers/peft (``load_lora_weights(..., adapter_name=)``,
``set_adapters``) before the draw and removes them after it (even on error), so nothing reaches the next
request. A LoRA made for another base model is refused before loading: its cross-attention width (the input
width of an ``attn2.to_k`` LoRA matrix) or its second text encoder must match the model.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import BestshotError

EXTENSIONS = (".safetensors", ".safetensor")
ADAPTER_PREFIX = "bestshot_lora_"
_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}  # cross-attention width of each base family


@dataclass(frozen=True)
class LoraFile:
    name: str  # file stem
    path: Path
    weight: float
    trigger_words: tuple[str, ...]

    @property
    def adapter(self) -> str:
        return ADAPTER_PREFIX + re.sub(r"\W", "_", self.name)


def trigger_words(txt: Path) -> tuple[str, ...]:
    """Comma- or line-separated trigger words of a ``.txt`` file; () when there is none."""
    if not txt.is_file():
        return ()
    text = txt.read_text(encoding="utf-8", errors="replace")
    return tuple(t.strip() for t in re.split(r"[,\n]", text) if t.strip())


def listed(pipe: Any) -> set[str]:
    """Adapter names the pipeline holds in any component."""
    try:
        return {a for names in pipe.get_list_adapters().values() for a in names}
    except Exception:  # noqa: BLE001 - no peft layers yet, or no LoRA support at all
        return set()


def folder(cfg: Any) -> Path:
    """The folder LoRA names are looked up in."""
    if getattr(cfg, "lora_dir", None):
        return Path(cfg.lora_dir).expanduser()
    return Path(cfg.out_dir).expanduser().absolute().parent / "models" / "Lora"


def split_entry(entry: str) -> tuple[str, float]:
    """``"name:0.8"`` → ``("name", 0.8)``; no number after the last colon: weight 1."""
    head, sep, tail = entry.strip().rpartition(":")
    if sep and head:
        try:
            return head.strip(), float(tail)
        except ValueError:
            pass
    return entry.strip(), 1.0


def files(root: Path) -> list[Path]:
    """Every LoRA file under ``root`` (recursively), sorted."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def find(name: str, root: Path) -> Path:
    """The file a LoRA entry names: a path to a file, or a stem (any case) under ``root``."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    found = files(root)
    for match in (lambda f: f.stem == name, lambda f: f.stem.lower() == name.lower()):
        hits = [f for f in found if match(f)]
        if hits:
            return hits[0]
    have = ", ".join(f.stem for f in found[:10]) or "none"
    raise BestshotError(
        f"LoRA {name!r} not found: no such file, and no {name}.safetensors in {root} (LoRAs there: {have}) — "
        "give the file's path, or put it in that folder (--lora-dir)"
    )


def resolve(cfg: Any) -> list[LoraFile]:
    """``cfg.loras`` as files with weights and trigger words (a clear error for one that is missing)."""
    root = folder(cfg)
    out = []
    for entry in getattr(cfg, "loras", ()) or ():
        name, weight = split_entry(entry)
        path = find(name, root)
        out.append(LoraFile(path.stem, path, weight, trigger_words(path.with_suffix(".txt"))))
    return out


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - not a safetensors file at all
        raise BestshotError(
            f"LoRA {path} cannot be read as .safetensors ({type(e).__name__}) — is it a LoRA?"
        ) from None


def check_fits(lora: LoraFile, pipe: Any) -> None:
    """Refuse a LoRA trained for another base model (read from its keys and shapes, before loading)."""
    shapes = _shapes(lora.path)
    sdxl_lora = any(k.startswith(("lora_te2_", "text_encoder_2.", "te2.")) for k in shapes)
    if sdxl_lora and getattr(pipe, "text_encoder_2", None) is None:
        raise BestshotError(
            f"LoRA {lora.name!r} ({lora.path}) is for SDXL (it has second-text-encoder weights) and this model is "
            "not — use a LoRA made for this model"
        )
    unet = getattr(pipe, "unet", None)
    want = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
    for key, shape in shapes.items():
        down = any(d in key for d in ("lora_A", "lora_down", "lora.down"))
        if "attn2" in key and "to_k" in key and down and len(shape) >= 2:
            if want is not None and shape[1] != want:
                raise BestshotError(
                    f"LoRA {lora.name!r} ({lora.path}) is for another base model ({_WIDTHS.get(shape[1], 'unknown')}: "
                    f"cross-attention width {shape[1]}), this model's width is {want} "
                    f"({_WIDTHS.get(want, 'unknown')}) — use a LoRA made for this model"
                )
            break


@lru_cache(maxsize=256)
def _hash(path: str, size: int, mtime: float) -> str:
    """A1111's LoRA hash: sha256 of the safetensors file after its header, first 12 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(8 + n)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def short_hash(path: Path) -> str:
    st = path.stat()
    return _hash(str(path), st.st_size, st.st_mtime)


def metadata(path: Path) -> dict[str, Any]:
    """The file's safetensors ``__metadata__`` (kohya's ``ss_*`` keys), {} if it has none."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - an unreadable file lists without metadata
        return {}


def _refuse(pipe: Any) -> None:
    if not hasattr(pipe, "load_lora_weights") or getattr(pipe, "unet", None) is None:
        raise BestshotError(
            f"this model's pipeline ({type(pipe).__name__}) takes no LoRAs — LoRAs work with Stable Diffusion 1.x/2.x "
            "and SDXL models: choose one with --model, or drop --lora and the prompt's <lora:...> tags"
        )


def _load(pipe: Any, lora: LoraFile) -> None:
    check_fits(lora, pipe)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config`")
            pipe.load_lora_weights(str(lora.path), adapter_name=lora.adapter)
    except Exception as e:  # noqa: BLE001 - any failure means "does not fit this model"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise BestshotError(
            f"LoRA {lora.name!r} ({lora.path}) does not fit this model ({type(e).__name__}: {first}) — use a LoRA "
            "made for this model"
        ) from None
    if lora.adapter not in listed(pipe):  # diffusers only warns when no key matches the model
        raise BestshotError(
            f"LoRA {lora.name!r} ({lora.path}): none of its keys match this model's layers — is it a LoRA for "
            "this model?"
        )


def _unload(pipe: Any, names: list[str]) -> None:
    held = listed(pipe)
    mine = [n for n in names if n in held]
    if held and not (held - set(mine)):
        pipe.unload_lora_weights()  # only ours: the model's own layers back, exactly as before
    elif mine:
        pipe.delete_adapters(mine)


@contextmanager
def prepared(pipe: Any, cfg: Any, prompt: str, negative: str, seeds: Sequence[int]) -> Iterator[dict[str, Any]]:
    """``cfg.loras`` applied to ``pipe`` for the draw (no extra pipeline arguments), removed afterwards."""
    loras = resolve(cfg)
    if not loras:
        yield {}
        return
    _refuse(pipe)
    names: list[str] = []
    try:
        for lora in loras:
            if lora.adapter not in names:
                names.append(lora.adapter)
                _load(pipe, lora)
        weights = {lo.adapter: 0.0 for lo in loras}
        for lo in loras:  # the same LoRA twice: its weights add, as A1111's do
            weights[lo.adapter] += lo.weight
        if hasattr(pipe, "enable_lora"):
            pipe.enable_lora()
        pipe.set_adapters(names, adapter_weights=[weights[n] for n in names])
        yield {}
    finally:
        _unload(pipe, names)
