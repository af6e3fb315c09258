"""A trainable image captioner in the ClipCap / BLIP-2 spirit, and a wrapper for hub captioners.

Frozen CLIP image encoder → small mapping transformer → ``prefix_len`` prefix embeddings → a causal LM
(transformers' ``GPT2LMHeadModel``) that continues the prefix with the caption. Trained with the LM's
negative log-likelihood of the caption tokens only (the prefix positions carry no labels).

What the mapper reads (``features``):
- ``pooled`` (ClipCap): the normalised CLIP image embedding, one vector.
- ``patches`` (LLaVA's projector, in small): every token of the vision tower's last layer (class token
  and patches, after its final layer norm) is projected, given a learned position, mixed by the mapper
  and becomes one prefix token, so the LM reads the patch grid in order (``prefix_len`` is unused). A
  pooled CLIP embedding is a bag of words for layouts (it cannot say which object is left of which);
  the patch tokens still know where each object is.

- From scratch (the embedded world): a tiny GPT-2 built from a ``GPT2Config`` over the real CLIP BPE
  vocabulary (no GPT-2 tokenizer exists offline); every LM layer trains.
- Pretrained (``lm="gpt2"`` or a local folder): its own tokenizer; all LM layers but the last
  ``trainable_lm_layers`` (default 2: the last two, as ClipCap-style fine-tuning does) are frozen, embeddings included.

Only the mapper and the trainable LM layers learn; the CLIP is referenced by its spec and fingerprint,
never copied into the captioner folder. :func:`load_caption_model` also accepts any transformers
image-to-text model (BLIP, GIT, ...) so the interrogator treats both the same way.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..config import EMBEDDED
from ..errors import BestshotError
from ..store import atomic_write_bytes, atomic_write_json
from ..yaml_io import dataclass_from_dict, read_yaml_mapping

CONFIG_NAME = "captioner.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class CaptionerConfig:
    """Architecture and training settings (YAML-loadable; unknown keys are an error)."""

    clip: str = EMBEDDED
    features: str = "pooled"  # what the mapper reads: "pooled" (the CLIP embedding) or "patches" (all vision tokens)
    patch_pool: int = 1  # patches: average the patch grid over patch_pool × patch_pool cells (fewer prefix tokens)
    lm: str | None = None  # pretrained GPT-2 id or folder; None = a tiny GPT-2 from scratch
    prefix_len: int = 8
    mapper_layers: int = 2
    mapper_heads: int = 4
    n_embd: int = 128  # tiny LM only
    n_layer: int = 3
    n_head: int = 4
    max_tokens: int = 32  # caption tokens, end token included
    # decoding: the CLIP picks among this many best beams (1 = the top beam). On the bench's 200 generated images
    # 8 lifted the MiniLM score 0.800 → 0.815 (bench/RESULTS.md); a setting of decoding, not of training
    rerank: int = 8
    trainable_lm_layers: int | None = None  # None: all (scratch) or 2 (pretrained)
    dataset: str = "world"  # anything bestshot.train.data.build_dataset understands
    image_size: int = 64
    length: int | None = None  # dataset items (None: the dataset's default)
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50
    checkpoint_every: int = 250
    seed: int = 0
    device: str | None = None
    # world only: every generated_every-th training image is a world item redrawn by this model (SDEdit at a
    # strength in generated_strength, conditioned on its own caption; bestshot.train.generated), so the
    # captioner also learns what generated images look like; "" = renders only. The pool (generated_pool
    # items at generated_size px, the model's own size) is cached beside the captioner.
    generated_model: str = ""
    generated_pool: int = 2048
    generated_strength: tuple[float, float] = (0.2, 0.4)
    generated_every: int = 2
    generated_size: int = 32

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionerConfig:
        return dataclass_from_dict(cls, data, "captioner")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> CaptionerConfig:
        return cls.from_dict(read_yaml_mapping(path, "check the path given to --config"))


FEATURES = ("pooled", "patches")


class Mapper(nn.Module):
    """CLIP features → LM input embeddings (the prefix).

    ``n_tokens == 0`` (pooled, ClipCap's transformer mapper): the embedding (B, clip_dim) is projected to
    ``prefix_len`` tokens, learned constant tokens are appended, a small transformer mixes them and the
    constant positions become the prefix. ``n_tokens > 0`` (patches): each of the (B, n_tokens, clip_dim)
    vision tokens is projected and given a learned position, the transformer mixes them, and all
    ``n_tokens`` become the prefix. (Learned queries reading the patches, as in BLIP-2, start out
    averaging them, and an average of the same patches moved around hardly changes: on a tiny model their
    prefix for two mirrored scenes differed 300 times less than a prefix that keeps the grid.)
    """

    def __init__(self, clip_dim: int, lm_dim: int, prefix_len: int, layers: int, heads: int, n_tokens: int = 0):
        super().__init__()
        self.prefix_len, self.lm_dim, self.n_tokens = prefix_len, lm_dim, n_tokens
        if n_tokens:
            self.proj = nn.Linear(clip_dim, lm_dim)
            self.pos = nn.Parameter(torch.randn(n_tokens, lm_dim) * 0.02)
        else:
            self.proj = nn.Linear(clip_dim, prefix_len * lm_dim)
            self.const = nn.Parameter(torch.randn(prefix_len, lm_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            lm_dim, heads, 4 * lm_dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.tf = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        if self.n_tokens:
            return self.tf(self.proj(e) + self.pos)
        x = self.proj(e).view(e.shape[0], self.prefix_len, self.lm_dim)
        x = torch.cat([x, self.const.expand(e.shape[0], -1, -1)], 1)
        return self.tf(x)[:, self.prefix_len :]


def vision_tokens(scorer: Any, images: Sequence[Image.Image], pool: int = 1) -> torch.Tensor:
    """(B, n_tokens, hidden): the frozen CLIP vision tower's last layer (class token + patches), layer-normed;
    the patch grid averaged over ``pool`` × ``pool`` cells."""
    vision = scorer.model.vision_model
    out = []
    with torch.no_grad():
        for pix in scorer.pixel_batches(images):
            hidden = vision.post_layernorm(vision(pixel_values=pix).last_hidden_state).float()
            if pool > 1:
                cls, patches = hidden[:, :1], hidden[:, 1:]
                g = int(round(patches.shape[1] ** 0.5))
                grid = patches.transpose(1, 2).reshape(len(hidden), -1, g, g)
                patches = nn.functional.avg_pool2d(grid, pool).flatten(2).transpose(1, 2)
                hidden = torch.cat([cls, patches], 1)
            out.append(hidden)
    return torch.cat(out)


def _feature_shape(cfg: CaptionerConfig, scorer: Any) -> tuple[int, int]:
    """(clip_dim, n_tokens) of what the mapper reads from ``scorer``'s CLIP."""
    if cfg.features not in FEATURES:
        raise BestshotError(f"captioner features {cfg.features!r} is not one of {', '.join(FEATURES)}")
    conf = scorer.model.config
    if cfg.features == "pooled":
        return int(conf.projection_dim), 0
    v = conf.vision_config
    g = int(v.image_size) // int(v.patch_size)
    if cfg.patch_pool < 1 or g % cfg.patch_pool:
        raise BestshotError(f"patch_pool {cfg.patch_pool} must divide the CLIP's {g}×{g} patch grid")
    return int(v.hidden_size), (g // cfg.patch_pool) ** 2 + 1


def _tokenizer_for(cfg: CaptionerConfig):
    if cfg.lm:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.lm)
    else:
        from ..models.clip_tokenizer import build_clip_tokenizer

        tok = build_clip_tokenizer()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


class PrefixCaptioner(nn.Module):
    def __init__(
        self,
        cfg: CaptionerConfig,
        clip_dim: int,
        lm: Any,
        tokenizer: Any,
        clip_fingerprint: str = "",
        n_tokens: int = 0,
    ):
        super().__init__()
        self.cfg, self.clip_dim, self.lm, self.tokenizer = cfg, clip_dim, lm, tokenizer
        self.clip_fingerprint, self.n_tokens = clip_fingerprint, n_tokens
        self.mapper = Mapper(clip_dim, lm.config.n_embd, cfg.prefix_len, cfg.mapper_layers, cfg.mapper_heads, n_tokens)
        self.scorer: Any = None  # the frozen CLIP, attached by create/load
        self.set_trainable(cfg.trainable_lm_layers)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, cfg: CaptionerConfig, scorer: Any) -> PrefixCaptioner:
        from transformers import GPT2Config, GPT2LMHeadModel

        from .fingerprint import model_fingerprint

        clip_dim, n_tokens = _feature_shape(cfg, scorer)
        tok = _tokenizer_for(cfg)
        if cfg.lm:
            try:
                lm = GPT2LMHeadModel.from_pretrained(cfg.lm)
            except OSError as e:
                raise BestshotError(
                    f"cannot load the language model {cfg.lm!r} ({str(e).splitlines()[0][:160]}) — "
                    "give a local GPT-2 folder, or leave lm empty to train a tiny one"
                ) from None
        else:
            prefix = n_tokens or cfg.prefix_len
            lm = GPT2LMHeadModel(
                GPT2Config(
                    vocab_size=len(tok),
                    n_positions=prefix + cfg.max_tokens + 1,
                    n_embd=cfg.n_embd,
                    n_layer=cfg.n_layer,
                    n_head=cfg.n_head,
                    bos_token_id=tok.eos_token_id,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )
            )
        model = cls(cfg, clip_dim, lm, tok, model_fingerprint(scorer), n_tokens)
        model.scorer = scorer
        return model

    def set_trainable(self, k: int | None) -> None:
        """Freeze all LM layers but the last ``k`` (None: all trainable from scratch, 2 when pretrained)."""
        n = self.lm.config.n_layer
        k = (2 if self.cfg.lm else n) if k is None else k
        if not 0 <= k <= n:
            raise BestshotError(f"trainable_lm_layers must be 0..{n}, got {k}")
        if k == n and not self.cfg.lm:
            self.lm.requires_grad_(True)
            return
        self.lm.requires_grad_(False)
        for block in self.lm.transformer.h[n - k :]:
            block.requires_grad_(True)
        if k:
            self.lm.transformer.ln_f.requires_grad_(True)

    # ------------------------------------------------------------------ training
    def _ids(self, captions: Sequence[str]) -> list[list[int]]:
        eos = self.tokenizer.eos_token_id
        out = []
        for c in captions:
            ids = self.tokenizer(c.strip(), add_special_tokens=False)["input_ids"][: self.cfg.max_tokens - 1]
            out.append(ids + [eos])
        return out

    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """What the mapper reads for ``images``: pooled CLIP embeddings or the vision tower's tokens."""
        if self.cfg.features == "patches":
            return vision_tokens(self.scorer, list(images), self.cfg.patch_pool)
        return self.scorer.embed_images(list(images))

    def loss(self, clip_emb: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Mean NLL of the caption tokens given the prefix (logits only where there are labels)."""
        dev = clip_emb.device
        ids = self._ids(captions)
        T = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        tok = torch.full((len(ids), T), pad, dtype=torch.long, device=dev)
        mask = torch.zeros((len(ids), T), dtype=torch.long, device=dev)
        for i, x in enumerate(ids):
            tok[i, : len(x)] = torch.tensor(x, device=dev)
            mask[i, : len(x)] = 1
        prefix = self.mapper(clip_emb)
        P = prefix.shape[1]
        emb = torch.cat([prefix, self.lm.transformer.wte(tok)], 1)
        att = torch.cat([torch.ones(len(ids), P, dtype=torch.long, device=dev), mask], 1)
        hidden = self.lm.transformer(inputs_embeds=emb, attention_mask=att).last_hidden_state
        # position P-1+t predicts token t; the (large-vocabulary) head runs only where a label exists
        h = hidden[:, P - 1 : P - 1 + T][mask.bool()]
        return nn.functional.cross_entropy(self.lm.lm_head(h).float(), tok[mask.bool()])

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(
        self,
        clip_emb: torch.Tensor,
        num_beams: int = 1,
        max_new_tokens: int | None = None,
        num_return_sequences: int = 1,
    ) -> list[str]:
        """Greedy (``num_beams=1``) or beam-search captions for CLIP features (see :meth:`features`); with
        ``num_return_sequences`` n, the n best beams of each image, image by image (n * len(clip_emb) texts)."""
        self.eval()
        prefix = self.mapper(clip_emb.to(self.mapper.proj.weight.device, self.mapper.proj.weight.dtype))
        att = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        out = self.lm.generate(
            inputs_embeds=prefix,
            attention_mask=att,
            do_sample=False,
            num_beams=max(num_beams, num_return_sequences),
            num_return_sequences=num_return_sequences,
            max_new_tokens=max_new_tokens or self.cfg.max_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        # CLIP's BPE decodes "circle, a" as "circle , a": tidy the spaces before punctuation
        return [re.sub(r"\s+([,.;:!?])", r"\1", " ".join(t.split())) for t in texts]

    def caption(self, images: Sequence[Image.Image], num_beams: int = 1, rerank: int | None = None) -> list[str]:
        """One caption per image. With ``rerank`` n > 1 (default: the config's), the n best beams of each
        image are proposed and the frozen CLIP picks the one closest to the image (the generate-then-rank
        decoding of CLIP re-ranking, as in ``bestshot generate``'s best of N), instead of the top beam."""
        if not images:
            return []
        n = self.cfg.rerank if rerank is None else rerank
        feats = self.features(images)
        if n <= 1:
            return self.generate(feats, num_beams=num_beams)
        texts = self.generate(feats, num_beams=num_beams, num_return_sequences=n)
        img = feats if self.cfg.features == "pooled" else self.scorer.embed_images(list(images))
        img = nn.functional.normalize(img.float().cpu(), dim=-1)
        unique = list(dict.fromkeys(texts))  # every image's options in one text batch
        emb = dict(zip(unique, self.scorer.embed_texts(unique).float().cpu()))
        out = []
        for i in range(len(images)):
            options = list(dict.fromkeys(texts[i * n : (i + 1) * n]))
            sims = torch.stack([emb[t] for t in options]) @ img[i]
            out.append(options[int(sims.argmax())])
        return out

    # ------------------------------------------------------------------ save / load
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the folder: every file is written to a temp name and renamed (a reader never sees half)."""
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if self.lm.config.tie_word_embeddings:
            state.pop("lm.lm_head.weight", None)  # tied to the token embedding; safetensors refuses shared tensors
        with tempfile.TemporaryDirectory(dir=folder, prefix=".tok-") as tmp:
            self.tokenizer.save_pretrained(tmp)
            (folder / "tokenizer").mkdir(exist_ok=True)
            for f in Path(tmp).iterdir():
                os.replace(f, folder / "tokenizer" / f.name)
        atomic_write_bytes(folder / WEIGHTS_NAME, save(state))
        atomic_write_json(
            folder / CONFIG_NAME,
            {
                "config": asdict(self.cfg),
                "clip_dim": self.clip_dim,
                "n_tokens": self.n_tokens,
                "lm_config": self.lm.config.to_dict(),
                "clip_fingerprint": self.clip_fingerprint,
            },
        )
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, scorer: Any = None, device: str | None = None) -> PrefixCaptioner:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

        from .fingerprint import model_fingerprint

        folder = Path(folder)
        try:
            meta = json.loads((folder / CONFIG_NAME).read_text())
            cfg = CaptionerConfig.from_dict(meta["config"])
            state = load_file(str(folder / WEIGHTS_NAME))
            tok = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        except (OSError, KeyError, ValueError) as e:
            raise BestshotError(
                f"{folder} is not a complete captioner folder ({e}) — train one with `bestshot train-captioner`"
            ) from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        lm = GPT2LMHeadModel(GPT2Config.from_dict(meta["lm_config"]))
        model = cls(cfg, int(meta["clip_dim"]), lm, tok, meta.get("clip_fingerprint", ""), int(meta.get("n_tokens", 0)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if k != "lm.lm_head.weight"]:
            raise BestshotError(
                f"captioner weights in {folder} do not fit its config (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}) — retrain it"
            )
        if scorer is None or model_fingerprint(scorer) != model.clip_fingerprint:
            from ..scoring import get_scorer

            scorer = get_scorer(cfg.clip, device=device)
            if model.clip_fingerprint and model_fingerprint(scorer) != model.clip_fingerprint:
                import warnings

                warnings.warn(
                    f"the CLIP {cfg.clip!r} changed since this captioner was trained; retrain it for good captions"
                )
        model.scorer = scorer
        return model.to(scorer.device).eval()


class HFCaptioner:
    """Any transformers image-to-text model (BLIP, GIT, ...) behind the same ``caption(images)`` call."""

    def __init__(self, spec: str, device: str | None = None, max_new_tokens: int = 40):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ..models.hub import require_hub_model
        from ..models.loader import resolve_device

        require_hub_model(
            spec,
            "caption model",
            "pass a local folder of a transformers image-to-text model (e.g. a saved BLIP) or a --captioner folder",
        )
        self.device = resolve_device(device)
        try:
            self.processor = AutoProcessor.from_pretrained(spec)
            self.model = AutoModelForImageTextToText.from_pretrained(spec).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise BestshotError(
                f"cannot load the caption model {spec!r} ({str(e).splitlines()[0][:160]}) — give a "
                "local folder or a cached hub id such as Salesforce/blip-image-captioning-large"
            ) from None
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]


def load_caption_model(spec: str, device: str | None = None, scorer: Any = None) -> Any:
    """A bestshot captioner folder (has captioner.json) or a transformers image-to-text model; cached."""
    from ..models.loader import CACHE

    key = ("captioner", str(spec), str(device))
    if key not in CACHE.scorers:
        if (Path(spec) / CONFIG_NAME).exists():
            CACHE.scorers[key] = PrefixCaptioner.load(spec, scorer=scorer, device=device)
        else:
            if Path(spec).exists() and not (Path(spec) / "config.json").exists():
                raise BestshotError(f"{spec} is neither a bestshot captioner nor a transformers model folder")
            CACHE.scorers[key] = HFCaptioner(spec, device=device)
    return CACHE.scorers[key]


# ---------------------------------------------------------------------------------------- training
def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """CHW in [-1, 1] (the dataset convention) → PIL RGB."""
    arr = ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")


class GeneratedWorldCaptions(torch.utils.data.Dataset):
    """Pool item ``i`` (world item ``i`` of ``seed`` redrawn by a denoiser) with that item's caption,
    scaled (nearest, so pixels are repeated, not invented) to ``size`` to batch with the renders."""

    def __init__(self, pool: torch.Tensor, seed: int, size: int):
        self.pool, self.seed, self.size = pool, seed, size

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int):
        from .. import world as W

        scene, rng = W.scene_for(self.seed, i % len(self.pool))
        x = self.pool[i % len(self.pool)].float() / 127.5 - 1.0
        if x.shape[-1] != self.size:
            x = nn.functional.interpolate(x[None], size=(self.size, self.size), mode="nearest")[0]
        return x, W.caption(scene, rng)


def _with_generated(cfg: CaptionerConfig, ds: Any, out: Path) -> Any:
    """``ds`` with every ``generated_every``-th item replaced by a generated world item (see the config)."""
    from ..train.generated import Interleaved, build_pool

    pool_seed = cfg.seed + 104729  # world items the render stream does not start with
    pool = build_pool(
        cfg.generated_model,
        pool_seed,
        cfg.generated_pool,
        cfg.generated_size,
        tuple(cfg.generated_strength),
        cache=out / "generated_pool.safetensors",
        device=cfg.device or "cpu",
    )
    return Interleaved(ds, GeneratedWorldCaptions(pool, pool_seed, cfg.image_size), cfg.generated_every)


def train_captioner(
    cfg: CaptionerConfig,
    out: str | os.PathLike,
    scorer: Any = None,
    on_log: Callable[[int, float], None] | None = None,
    log_every: int = 25,
) -> dict[str, Any]:
    """Train on ``cfg.dataset``; checkpoints (the whole folder) every ``checkpoint_every`` steps and at the end."""
    from ..scoring import get_scorer
    from ..train.data import build_dataset

    if cfg.generated_model and cfg.dataset.split(":")[0] != "world":
        raise BestshotError("generated_model needs dataset: world (it redraws world items with their captions)")
    if cfg.generated_model and (cfg.generated_every < 1 or cfg.generated_pool < 1):
        raise BestshotError("generated_every and generated_pool must be >= 1 (generated_every 2 = every other image)")
    torch.manual_seed(cfg.seed)
    scorer = scorer or get_scorer(cfg.clip, device=cfg.device)
    scorer.model.requires_grad_(False)
    model = PrefixCaptioner.create(cfg, scorer).to(scorer.device)
    ds = build_dataset(cfg.dataset, size=cfg.image_size, length=cfg.length, seed=cfg.seed)
    if len(ds) == 0:
        raise BestshotError(f"dataset {cfg.dataset!r} is empty — give images with captions")
    if cfg.generated_model:
        ds = _with_generated(cfg, ds, Path(out))
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=min(cfg.batch_size, len(ds)), shuffle=True, generator=gen, drop_last=len(ds) >= cfg.batch_size
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / max(1, cfg.warmup)) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
        ),
    )
    history: list[tuple[int, float]] = []
    it, t0, running = iter(loader), time.time(), []
    model.train()
    for step in range(1, cfg.steps + 1):
        try:
            images, captions = next(it)
        except StopIteration:
            it = iter(loader)
            images, captions = next(it)
        emb = model.features([tensor_to_pil(x) for x in images])
        loss = model.loss(emb, list(captions))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if step % log_every == 0 or step == cfg.steps:
            history.append((step, sum(running) / len(running)))
            running = []
            if on_log:
                on_log(step, history[-1][1])
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            model.save(out)
    return {
        "out": str(out),
        "steps": cfg.steps,
        "history": history,
        "seconds": round(time.time() - t0, 1),
        "trainable_params": sum(p.numel() for p in params),
    }
