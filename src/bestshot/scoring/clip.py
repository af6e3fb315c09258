"""CLIP scorers: transformers' ``CLIPModel`` (hub ids, local folders, the embedded CLIP) and open_clip."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import BestshotError
from ..models.hub import require_hub_model
from .gate import CLIP_DEFAULT_MIN, COSINE_RANGE


def _image_processor(folder: str | None, image_size: int):
    from transformers import CLIPImageProcessorPil

    if folder and (Path(folder) / "preprocessor_config.json").exists():
        return CLIPImageProcessorPil.from_pretrained(folder)
    if folder and not Path(folder).exists():  # hub id: its processor config lives in the cache
        try:
            return CLIPImageProcessorPil.from_pretrained(folder)
        except OSError:
            pass
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


class CLIPScorer:
    """Cosine similarity between CLIP image and text embeddings, computed in batches."""

    units, score_range, default_min = "cosine", COSINE_RANGE, CLIP_DEFAULT_MIN  # the gate's units (scoring.gate)

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        processor: Any,
        *,
        name: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype or next(model.parameters()).dtype
        self.batch_size = batch_size
        self.max_tokens = int(getattr(model.config.text_config, "max_position_embeddings", 77))

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        tokenizer_source: str | None = None,
        name: str | None = None,
    ) -> CLIPScorer:
        from transformers import CLIPModel, CLIPTokenizer

        local = Path(source).exists()
        if not local:
            require_hub_model(source, "CLIP scorer", "pass --scorer with a local CLIP folder or 'embedded'")
        try:
            model = CLIPModel.from_pretrained(source, dtype=dtype or torch.float32).to(device)
        except OSError as e:
            where = "folder" if local else "hub id (not in the local cache?)"
            raise BestshotError(
                f"cannot load the CLIP scorer from {source!r} ({where}) — pass --scorer with a local CLIP folder "
                f"or 'embedded' [{str(e).splitlines()[0][:160]}]"
            ) from None
        tok_src = tokenizer_source or source
        if local and not (Path(tok_src) / "vocab.json").exists() and (Path(source).parent / "tokenizer").exists():
            tok_src = str(Path(source).parent / "tokenizer")
        if not Path(tok_src).exists():  # a hub tokenizer: fail at once when the hub is out of reach, no retry loop
            require_hub_model(
                tok_src,
                "CLIP tokenizer",
                "put the tokenizer files (tokenizer.json, or vocab.json and merges.txt) in the model folder",
            )
        try:
            tokenizer = CLIPTokenizer.from_pretrained(tok_src)
        except OSError as e:
            raise BestshotError(
                f"cannot load a CLIP tokenizer from {tok_src!r} — it needs vocab.json and merges.txt [{e}]"
            ) from None
        processor = _image_processor(source, model.config.vision_config.image_size)
        return cls(model, tokenizer, processor, name=name or source, device=device, dtype=dtype)

    # ------------------------------------------------------------------ text
    def truncate(self, text: str) -> tuple[str, bool]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = self.max_tokens - 2  # start and end tokens
        if len(ids) <= limit:
            return text, False
        return self.tokenizer.decode(ids[:limit]).strip(), True

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding="max_length",
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            feats = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            out.append(_as_tensor(feats).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    # ----------------------------------------------------------------- images
    def pixel_batches(self, images: Sequence[Image.Image]) -> Iterator[torch.Tensor]:
        """``images`` as the vision tower's ``pixel_values`` (RGB, processed, on its device), a batch at a time."""
        for i in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[i : i + self.batch_size]]
            yield self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = [
            _as_tensor(self.model.get_image_features(pixel_values=pix)).float() for pix in self.pixel_batches(images)
        ]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def score(self, images: Sequence[Image.Image], text: str | Sequence[str]) -> list[float]:
        if not images:
            return []
        img = self.embed_images(images)
        if isinstance(text, str):
            txt = self.embed_texts([text])
            return (img @ txt[0]).tolist()
        if len(text) != len(images):
            raise BestshotError(f"got {len(images)} images but {len(text)} texts — give one text, or one per image")
        txt = self.embed_texts(list(text))
        return (img * txt).sum(-1).tolist()


def _as_tensor(x: Any) -> torch.Tensor:
    # transformers 5 may return a model output object instead of a bare tensor
    if isinstance(x, torch.Tensor):
        return x
    for attr in ("pooler_output", "text_embeds", "image_embeds"):
        v = getattr(x, attr, None)
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"unexpected CLIP output {type(x).__name__}")


class OpenCLIPScorer:
    """open_clip models, e.g. ``open_clip:ViT-B-32:laion2b_s34b_b79k`` (needs the ``open_clip_torch`` package)."""

    units, score_range, default_min = "cosine", COSINE_RANGE, CLIP_DEFAULT_MIN

    def __init__(self, model_name: str, pretrained: str | None, *, device: torch.device | str = "cpu"):
        try:
            import open_clip
        except ImportError as e:
            raise BestshotError(
                f"open_clip scorers need open_clip_torch with torchvision ({e}) — "
                "pip install open_clip_torch torchvision, or use a transformers CLIP (--scorer PATH)"
            ) from None
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device
            )
        except Exception as e:  # open_clip raises RuntimeError/ValueError for unknown names, OSError offline
            raise BestshotError(f"cannot create open_clip model {model_name!r} / {pretrained!r}: {e}") from None
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.model.eval()
        self.device = torch.device(device)
        self.name = f"open_clip:{model_name}:{pretrained}"

    def truncate(self, text: str) -> tuple[str, bool]:
        words = text.split()
        cut = False
        while words and int((self.tokenizer([" ".join(words)])[0] != 0).sum()) > 77:
            words, cut = words[:-1], True
        return " ".join(words), cut

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], text: str | Sequence[str]) -> list[float]:
        pix = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        img = torch.nn.functional.normalize(self.model.encode_image(pix).float(), dim=-1)
        texts = [text] if isinstance(text, str) else list(text)
        txt = torch.nn.functional.normalize(
            self.model.encode_text(self.tokenizer(texts).to(self.device)).float(), dim=-1
        )
        return (img @ txt[0]).tolist() if isinstance(text, str) else (img * txt).sum(-1).tolist()


def warn_truncated(original: str, kept: str) -> None:
    warnings.warn(f"clip_prompt is longer than CLIP's 77 tokens; scoring with the first part only: {kept!r}")
