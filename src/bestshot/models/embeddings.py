"""Textual-inversion embeddings: a folder of ``.safetensors`` / ``.pt`` / ``.bin`` files, one token each.

The folder is ``cfg.embeddings_dir`` (default ``embeddings`` beside the output folder, as A1111's
``embeddings``). A prompt (or negative prompt) that names a file's stem as a word gets that embedding for the
draw: :func:`prepared` loads it with diffusers' ``load_textual_inversion(path, token=stem)`` (SDXL files with
``clip_l`` / ``clip_g`` into both text encoders) and unloads it afterwards (``unload_textual_inversion``), so
the tokenizer and encoder are as before for the next request. Formats: A1111's ``.pt`` (``string_to_param``),
``emb_params`` safetensors, diffusers' ``{token: vector}``, SDXL's ``clip_l``/``clip_g``. Stems are matched
as written; the CLIP tokenizer lower-cases prompts, so name the files in lower case.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

EXTENSIONS = (".safetensors", ".pt", ".bin")


@dataclass(frozen=True)
class Embedding:
    name: str
    path: Path
    vectors: dict[str, torch.Tensor]  # "" (one encoder), or "clip_l" / "clip_g" (SDXL): (n, d) each
    step: int | None = None
    checkpoint: str | None = None
    checkpoint_name: str | None = None

    @property
    def shape(self) -> int:
        return int(next(iter(self.vectors.values())).shape[-1])

    @property
    def count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])


def folder(cfg: Any) -> Path:
    if getattr(cfg, "embeddings_dir", None):
        return Path(cfg.embeddings_dir).expanduser()
    return Path(cfg.out_dir).expanduser().absolute().parent / "embeddings"


def files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _2d(t: Any) -> torch.Tensor:
    t = torch.as_tensor(t).detach().float()
    return t[None] if t.ndim == 1 else t


def read(path: Path) -> Embedding | None:
    """The file's vectors and A1111 details; None for a file that is no embedding this reads."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable, or a pickle that is more than tensors: skipped
        return None
    if not isinstance(data, dict):
        return None
    extra = dict(
        step=data.get("step"), checkpoint=data.get("sd_checkpoint"), checkpoint_name=data.get("sd_checkpoint_name")
    )
    extra = {k: (v if isinstance(v, (int, str)) else None) for k, v in extra.items()}
    if "clip_l" in data and "clip_g" in data:
        vectors = {"clip_l": _2d(data["clip_l"]), "clip_g": _2d(data["clip_g"])}
    elif isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        vectors = {"": _2d(next(iter(data["string_to_param"].values())))}
    elif "emb_params" in data:
        vectors = {"": _2d(data["emb_params"])}
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            return None
        vectors = {"": _2d(tensors[0])}
    return Embedding(path.stem, path, vectors, **extra)


def mentioned(root: Path, *texts: str) -> list[Path]:
    """The embedding files whose stem ``texts`` name as a word."""
    text = "\n".join(t for t in texts if t)
    if not text:
        return []
    return [p for p in files(root) if re.search(rf"(?<!\w){re.escape(p.stem)}(?!\w)", text)]


def expected_dims(model_folder: str | Path | None) -> dict[str, int] | None:
    """Token-vector widths of a local diffusers model's text encoders ({"": d} or {"clip_l", "clip_g"}), None
    when the folder holds none (the embedded model, a hub id)."""
    if model_folder is None:
        return None
    dims = {}
    for sub, key in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
        cfg = Path(model_folder) / sub / "config.json"
        if cfg.is_file():
            try:
                dims[key] = int(json.loads(cfg.read_text()).get("hidden_size"))
            except (ValueError, TypeError, OSError):
                return None
    if not dims:
        return None
    return {"": dims["clip_l"]} if "clip_g" not in dims else dims


def fits(emb: Embedding, dims: dict[str, int] | None) -> bool:
    if dims is None:
        return True
    if set(emb.vectors) == {""}:
        return "" in dims and emb.shape == dims[""]
    return all(k in dims and int(v.shape[-1]) == dims[k] for k, v in emb.vectors.items())


def listing(root: Path, dims: dict[str, int] | None) -> dict[str, Any]:
    """A1111's ``/sdapi/v1/embeddings``: ``{"loaded": {name: info}, "skipped": {name: info}}``."""
    out: dict[str, Any] = {"loaded": {}, "skipped": {}}
    for p in files(root):
        emb = read(p)
        if emb is None:
            continue
        info = {
            "step": emb.step,
            "sd_checkpoint": emb.checkpoint,
            "sd_checkpoint_name": emb.checkpoint_name,
            "shape": emb.shape,
            "vectors": emb.count,
        }
        out["loaded" if fits(emb, dims) else "skipped"][emb.name] = info
    return out


def _pipe_dims(pipe: Any) -> dict[str, int] | None:
    try:
        d = {"clip_l": int(pipe.text_encoder.get_input_embeddings().weight.shape[1])}
        if getattr(pipe, "text_encoder_2", None) is not None:
            d["clip_g"] = int(pipe.text_encoder_2.get_input_embeddings().weight.shape[1])
            return d
        return {"": d["clip_l"]}
    except AttributeError:
        return None


@contextmanager
def prepared(pipe: Any, cfg: Any, prompt: str, negative: str, seeds: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The embeddings ``prompt`` / ``negative`` name, loaded into ``pipe`` for the draw and unloaded after it."""
    paths = mentioned(folder(cfg), prompt, negative)
    if not paths:
        yield {}
        return
    if not hasattr(pipe, "load_textual_inversion") or _pipe_dims(pipe) is None:
        warnings.warn(f"the {type(pipe).__name__} pipeline takes no textual-inversion embeddings; the words stay text")
        yield {}
        return
    dims = _pipe_dims(pipe)
    loaded: list[tuple[Any, Any, list[str]]] = []  # (tokenizer, text encoder, tokens added)
    try:
        for p in paths:
            emb = read(p)
            if emb is None or not fits(emb, dims):
                warnings.warn(
                    f"embedding {p.name} does not fit this model (vector width); skipped — the word stays text"
                )
                continue
            parts = (
                [("", pipe.tokenizer, pipe.text_encoder)]
                if set(emb.vectors) == {""}
                else [("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)]
            )
            for key, tok, enc in parts:
                before = set(tok.get_vocab())
                try:
                    pipe.load_textual_inversion(emb.vectors[key], token=emb.name, tokenizer=tok, text_encoder=enc)
                finally:
                    added = [t for t in tok.get_vocab() if t not in before]
                    if added:
                        loaded.append((tok, enc, added))
        yield {}
    finally:
        for tok, enc, added in reversed(loaded):
            pipe.unload_textual_inversion(added, tokenizer=tok, text_encoder=enc)
