"""Public preference models as scorers, with their real architectures and the hub ids users know.

* ``pickscore`` / ``yuvalkirstain/PickScore_v1`` / ``pickscore@FOLDER``: PickScore is a CLIPModel
  (ViT-H-14) fine-tuned on Pick-a-Pic; it goes through the CLIP path with the processor and tokenizer of
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (or the folder's own, when it has them). The score is the
  cosine similarity (PickScore's published number is ``logit_scale.exp()`` times it: same ranking).
* ``imagereward`` / ``THUDM/ImageReward`` / ``imagereward@FOLDER``: ImageReward is BLIP (ViT vision tower,
  BERT text encoder cross-attending to the image) with an MLP head 768→1024→128→64→16→1, normalised by the
  training mean and std. Built on transformers' ``BlipVisionModel`` and ``BlipTextModel``; a folder holds
  ``config.json`` (a ``BlipConfig``), ``model.safetensors`` and a BERT tokenizer (see
  :func:`save_image_reward`). The original ``ImageReward.pt`` of the ``THUDM/ImageReward`` repository (a
  state dict of the BLIP code base: ``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.layers.*``)
  is read too, ``imagereward@PATH/ImageReward.pt`` (or a folder holding it): :func:`convert_image_reward`
  renames its keys, the config is read off the tensor shapes (:func:`image_reward_config`), and the BERT
  tokenizer comes from the file's folder or the local cache of ``bert-base-uncased``.
* ``hpsv2`` / ``hpsv2@CHECKPOINT``: HPSv2 is open_clip's ViT-H-14 with the ``HPS_v2_compressed.pt``
  weights; it needs ``open_clip_torch`` (which needs torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import BestshotError
from .ensemble import Scale

PICKSCORE = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
IMAGEREWARD = "THUDM/ImageReward"
IMAGEREWARD_MEAN, IMAGEREWARD_STD = 0.16717362830052426, 1.0333394966054072
HPSV2_ARCH = "ViT-H-14"
HPSV2_CKPT = "HPS_v2_compressed.pt"


def _name_and_source(spec: str, names: tuple[str, ...]) -> str | None:
    low = spec.lower()
    for n in names:
        if low == n.lower():
            return ""
        if low.startswith(n.lower() + "@"):
            return spec.split("@", 1)[1]
    return None


def load_preference_model(spec: str, *, device: torch.device | str = "cpu", half: bool = False) -> Any | None:
    """The scorer for a preference-model spec, or None when ``spec`` names none."""
    dtype = torch.float16 if half else torch.float32
    src = _name_and_source(spec, ("pickscore", PICKSCORE))
    if src is not None:
        return pickscore(src or PICKSCORE, device=device, dtype=dtype, name=spec)
    src = _name_and_source(spec, ("imagereward", IMAGEREWARD))
    if src is not None:
        return ImageRewardScorer.from_pretrained(src or IMAGEREWARD, device=device, name=spec)
    src = _name_and_source(spec, ("hpsv2",))
    if src is not None:
        return hpsv2(src or None, device=device)
    return None


# ------------------------------------------------------------------------------------------ PickScore
def pickscore(
    source: str = PICKSCORE,
    *,
    processor: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    name: str = "pickscore",
) -> Any:
    from .clip import CLIPScorer, _image_processor

    if processor is None:  # the folder's own tokenizer, else its sibling tokenizer/, else the hub's ViT-H-14 one
        local = Path(source)
        mine = [f for f in (local, local.parent / "tokenizer") if local.exists() and _has_tokenizer(f)]
        processor = str(mine[0]) if mine else PICKSCORE_PROCESSOR
    scorer = CLIPScorer.from_pretrained(source, device=device, dtype=dtype, tokenizer_source=processor, name=name)
    scorer.processor = _image_processor(processor, scorer.model.config.vision_config.image_size)
    scorer.default_min = None  # a preference model's cosine: no default gate (scoring.gate)
    return scorer


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").exists() or (folder / "vocab.json").exists()


# --------------------------------------------------------------------------------------- ImageReward
class ImageRewardModel(torch.nn.Module):
    """BLIP image-text encoder + ImageReward's MLP head (the layer sizes of the published model)."""

    def __init__(self, config: Any):
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        self.config = config
        config.text_config.is_decoder = True  # BLIP's text encoder has a cross-attention block in every layer
        self.vision = BlipVisionModel(config.vision_config)
        self.text = BlipTextModel(config.text_config, add_pooling_layer=False)
        width = config.text_config.hidden_size
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        image = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
        out = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        return ((self.mlp(out[:, 0, :]).squeeze(-1)) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


def save_image_reward(model: ImageRewardModel, tokenizer: Any, folder: str | Path) -> Path:
    """Write the folder :meth:`ImageRewardScorer.from_pretrained` reads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)
    return folder


_VIT_BLOCK = {  # BLIP's ViT block (timm layout) → transformers' BlipEncoderLayer
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIT_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
# parts of the original checkpoint ImageReward's score never reads: BLIP's other heads (vision_proj, text_proj,
# anything under blip.* beside the two encoders) and the position-id buffer
_ENCODERS = ("blip.visual_encoder.", "blip.text_encoder.")


def _unused(key: str) -> bool:
    return (key.startswith("blip.") and not key.startswith(_ENCODERS)) or key.endswith("embeddings.position_ids")


def is_original_image_reward(state: dict[str, Any]) -> bool:
    return any(k.startswith("blip.visual_encoder.") for k in state) and any(k.startswith("mlp.layers.") for k in state)


def convert_image_reward(state: dict[str, Any]) -> dict[str, Any]:
    """The original ImageReward state dict (BLIP code base) with the key names of :class:`ImageRewardModel`.

    ``blip.visual_encoder.*`` (timm-style ViT) → ``vision.*``; ``blip.text_encoder.*`` (BLIP's med.py BERT,
    the layout transformers' BLIP text model was ported from) → ``text.*``; ``mlp.layers.N`` → ``mlp.N``;
    BLIP's other heads are dropped. Any other key is an error naming it: the file is not the layout this reads.
    """
    import re

    if not is_original_image_reward(state):
        some = ", ".join(list(state)[:3]) or "no keys"
        raise BestshotError(
            f"unknown ImageReward checkpoint layout (keys like {some}) — expected the original "
            "ImageReward.pt (blip.visual_encoder.*, blip.text_encoder.*, mlp.layers.*) or a folder "
            "written by save_image_reward"
        )
    out: dict[str, Any] = {}
    unknown = []
    for k, v in state.items():
        if _unused(k):
            continue
        if k.startswith("mlp.layers."):
            out["mlp." + k[len("mlp.layers.") :]] = v
        elif k.startswith("blip.text_encoder."):
            out["text." + k[len("blip.text_encoder.") :]] = v
        elif k.startswith("blip.visual_encoder."):
            rest = k[len("blip.visual_encoder.") :]
            m = re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias)$", rest)
            if rest in _VIT_TOP:
                out["vision." + _VIT_TOP[rest]] = v
            elif m and m.group(2) in _VIT_BLOCK:
                out[f"vision.encoder.layers.{m.group(1)}.{_VIT_BLOCK[m.group(2)]}.{m.group(3)}"] = v
            else:
                unknown.append(k)
        else:
            unknown.append(k)
    if unknown:
        raise BestshotError(
            f"unknown keys in the ImageReward checkpoint: {', '.join(unknown[:5])} — expected the "
            "original ImageReward.pt layout"
        )
    return out


def image_reward_config(state: dict[str, Any]) -> Any:
    """A ``BlipConfig`` read off the shapes of an original ImageReward state dict (ViT-L/16 at 224 px and
    BERT-base with cross-attention, for the published file), with the BLIP code base's layer-norm epsilons."""
    import re

    from transformers import BlipConfig

    def count(prefix: str) -> int:
        return 1 + max(int(m.group(1)) for k in state for m in [re.match(prefix + r"(\d+)\.", k)] if m)

    try:
        patch = state["blip.visual_encoder.patch_embed.proj.weight"]
        width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
        n_pos = int(state["blip.visual_encoder.pos_embed"].shape[1]) - 1
        words = state["blip.text_encoder.embeddings.word_embeddings.weight"]
        text_width = int(words.shape[1])
        vision = dict(
            hidden_size=width,
            patch_size=patch_size,
            image_size=int(round(n_pos**0.5)) * patch_size,
            num_hidden_layers=count(r"blip\.visual_encoder\.blocks\."),
            intermediate_size=int(state["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0]),
            num_attention_heads=max(1, width // 64),
            layer_norm_eps=1e-6,
        )
        text = dict(
            vocab_size=int(words.shape[0]),
            hidden_size=text_width,
            encoder_hidden_size=width,
            num_hidden_layers=count(r"blip\.text_encoder\.encoder\.layer\."),
            intermediate_size=int(state["blip.text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0]),
            num_attention_heads=max(1, text_width // 64),
            layer_norm_eps=1e-12,
            max_position_embeddings=int(state["blip.text_encoder.embeddings.position_embeddings.weight"].shape[0]),
            pad_token_id=0,
            **{
                k: (v if v < int(words.shape[0]) else None)  # BLIP's [DEC] and [SEP]
                for k, v in (("bos_token_id", 30522), ("sep_token_id", 102))
            },
        )
    except (KeyError, ValueError, IndexError) as e:
        raise BestshotError(
            f"cannot read the ImageReward configuration off the checkpoint (missing {e}) — expected "
            "the original ImageReward.pt layout"
        ) from None
    return BlipConfig(text_config=text, vision_config=vision)


def _original_tokenizer(folder: Path) -> Any:
    """The checkpoint folder's tokenizer (saved files, or a bare ``vocab.txt``), else the cached
    ``bert-base-uncased`` (BLIP's; its two added tokens, [DEC] and [ENC], never occur in a prompt)."""
    from transformers import AutoTokenizer, BertTokenizer

    if (folder / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if (folder / "vocab.txt").is_file():
        return BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    try:
        return BertTokenizer.from_pretrained("bert-base-uncased", local_files_only=True)
    except (OSError, ValueError):
        pass
    raise BestshotError(
        f"no BERT tokenizer for the ImageReward checkpoint — put its vocab.txt (bert-base-uncased) "
        f"beside the file in {folder}, or download bert-base-uncased into the Hugging Face cache"
    )


class ImageRewardScorer:
    # the model's output is already (reward - mean) / std with ImageReward's own constants
    scale = Scale(0.0, 1.0, "imagereward")
    units, score_range, default_min = "ImageReward (standardised)", None, None  # a preference: no default gate

    def __init__(
        self,
        model: ImageRewardModel,
        tokenizer: Any,
        *,
        name: str,
        device: torch.device | str = "cpu",
        batch_size: int = 16,
    ):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size
        size = model.config.vision_config.image_size
        try:
            from transformers import BlipImageProcessorPil as Processor  # no torchvision needed
        except ImportError:  # older transformers
            from transformers import BlipImageProcessor as Processor

        self.processor = Processor(size={"height": size, "width": size})

    @classmethod
    def from_pretrained(cls, source: str, *, device: torch.device | str = "cpu", name: str = "imagereward"):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, BlipConfig

        folder = Path(source)
        original = folder if folder.is_file() else folder / "ImageReward.pt"
        if original.is_file() and not (folder.is_dir() and (folder / "model.safetensors").is_file()):
            return cls.from_original(original, device=device, name=name)
        if not folder.is_dir():
            raise BestshotError(
                f"ImageReward weights {source!r} are not on disk — download ImageReward.pt from {IMAGEREWARD} and give "
                "imagereward@PATH/ImageReward.pt, or imagereward@FOLDER with config.json, model.safetensors and a "
                "BERT tokenizer (bestshot.scoring.preference_models.save_image_reward writes one)"
            )
        weights = folder / "model.safetensors"
        if not (folder / "config.json").is_file() or not weights.is_file():
            raise BestshotError(
                f"{folder} needs config.json and model.safetensors for an ImageReward scorer — "
                "write it with save_image_reward"
            )
        try:
            config = BlipConfig.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise BestshotError(
                f"cannot read the ImageReward config/tokenizer in {folder}: {str(e).splitlines()[0]}"
            ) from None
        model = ImageRewardModel(config)
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        if missing or unexpected:
            raise BestshotError(
                f"{weights} does not match the ImageReward architecture (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        return cls(model, tokenizer, name=name, device=device)

    @classmethod
    def from_original(
        cls, path: str | Path, *, device: torch.device | str = "cpu", name: str = "imagereward", tokenizer: Any = None
    ) -> ImageRewardScorer:
        """The original ``ImageReward.pt`` (BLIP code-base state dict), converted by :func:`convert_image_reward`."""
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle of something else, a truncated file, ...
            raise BestshotError(
                f"cannot read {path} as a PyTorch state dict ({str(e).splitlines()[0][:160]})"
            ) from None
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, dict):
            raise BestshotError(f"{path} holds no state dict — expected the original ImageReward.pt")
        converted = convert_image_reward(state)
        model = ImageRewardModel(image_reward_config(state))
        missing, unexpected = model.load_state_dict(converted, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise BestshotError(
                f"{path} does not match the ImageReward architecture (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        return cls(
            model, tokenizer if tokenizer is not None else _original_tokenizer(path.parent), name=name, device=device
        )

    def truncate(self, text: str) -> tuple[str, bool]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return (text, False) if len(ids) <= 35 else (self.tokenizer.decode(ids[:35]), True)

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], text: str | Sequence[str]) -> list[float]:
        from .base import texts_per_image

        texts = texts_per_image(images, text)
        out: list[float] = []
        for i in range(0, len(images), self.batch_size):
            ims = [im.convert("RGB") for im in images[i : i + self.batch_size]]
            pix = self.processor(images=ims, return_tensors="pt")["pixel_values"].to(self.device)
            tok = self.tokenizer(
                texts[i : i + self.batch_size],
                padding="max_length",
                truncation=True,
                max_length=35,
                return_tensors="pt",
            ).to(self.device)
            out += self.model(pix, tok["input_ids"], tok["attention_mask"]).float().tolist()
        return out


# --------------------------------------------------------------------------------------------- HPSv2
def hpsv2(checkpoint: str | None = None, *, device: torch.device | str = "cpu") -> Any:
    from .clip import OpenCLIPScorer

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise BestshotError(f"HPSv2 checkpoint {checkpoint} does not exist — give hpsv2@PATH/{HPSV2_CKPT}")
    try:
        import open_clip  # noqa: F401
    except ImportError as e:
        raise BestshotError(
            f"HPSv2 is open_clip's {HPSV2_ARCH} and needs open_clip_torch with torchvision ({e}) — "
            "pip install open_clip_torch torchvision, then --scorer hpsv2@PATH/" + HPSV2_CKPT
        ) from None
    if checkpoint is None:
        raise BestshotError(
            f"HPSv2 weights are not bundled — download {HPSV2_CKPT} (xswu/HPSv2 on the hub) and pass "
            f"--scorer hpsv2@PATH/{HPSV2_CKPT}"
        )
    scorer = OpenCLIPScorer(HPSV2_ARCH, checkpoint, device=device)
    scorer.name = "hpsv2"
    scorer.default_min = None  # a preference model's cosine: no default gate (scoring.gate)
    return scorer
