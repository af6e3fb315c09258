"""``bestshot train clip``: a small CLIP trained contrastively, with hard-negative captions on the world.

Why hard negatives: best-of-N only helps if the scorer can tell "a red circle above a blue square" from
"a blue circle above a red square" or "... below ...". Plain in-batch InfoNCE rarely sees such pairs, so
for world scenes every image also gets K captions of the *same* scene with one attribute changed
(colours swapped, another colour or shape, relation flipped, an object dropped or added), drawn with the
same caption template, as extra text columns of its row in the image→text softmax.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from bestshot import jsonio
from bestshot.errors import BestshotError
from bestshot.models.clip_tokenizer import build_clip_tokenizer
from bestshot.models.embedded_clip import image_features, image_processor, text_features, to_clip_pixels
from bestshot.train.common import atomic_write_text, load_config, lr_at, plot_losses
from bestshot.train.hard_negatives import hard_negative_captions


@dataclass
class ClipTrainConfig:
    dataset: str = "world"
    img_size: int = 32
    patch_size: int = 4
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    max_length: int = 48  # tokenizer model_max_length (the positions table keeps 77)
    projection_dim: int = 128
    hard_negatives: int = 3  # extra captions per image (world only)
    shape_negatives: int = 1  # how many of the candidate edits change an object's shape (the hardest attribute)
    # true: every object of a scene gets shape_negatives shape edits, not one object picked at random (for
    # scenes of 2-3 objects, whose shapes a CLIP trained on one edit per image binds worst)
    shape_negatives_every_object: bool = False
    # how often world items have 1, 2 and 3 objects, e.g. [0.3, 0.5, 0.2]; [] = the world's own mix
    object_weights: tuple[float, ...] = ()
    batch_size: int = 128
    steps: int = 400
    max_minutes: float = 0.0  # stop (and save) after this wall time; 0 = no limit
    lr: float = 1e-3
    warmup_steps: int = 40
    weight_decay: float = 0.05
    eval_size: int = 256
    seed: int = 0
    threads: int = 0  # torch.set_num_threads; 0 = leave as is
    num_workers: int = 0  # DataLoader worker processes (rendering + captions); 0 = in the training process
    out_dir: str = "runs/clip"
    log_every: int = 10
    # continue from a trained CLIP folder; freeze_text keeps its text tower (and text projection) fixed, so a
    # diffusion model conditioned on that text tower stays valid while the image side keeps learning
    init_from: str = ""
    freeze_text: bool = False
    # a new image tower (sized by this config's vision_* and patch_size) with the text tower, text projection,
    # logit scale and tokenizer of a trained CLIP folder; with freeze_text the new image side learns to map
    # images into the embedding space a denoiser is already conditioned on. Not together with init_from.
    init_text_from: str = ""
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    # with max_minutes: the warm-up/cosine schedule runs over the wall-time budget instead of the step count,
    # so a run stopped by its time limit has annealed its learning rate (steps is then only an upper bound)
    schedule_by_time: bool = False
    # degrade training images the way generated ones differ from rendered ones (soft edges, grain): per image
    # a Gaussian blur of sigma ~ U(0, blur_max) pixels and Gaussian noise of std ~ U(0, noise_max) in [-1, 1]
    # units, each applied with probability degrade_prob. 0 = off (held-out evaluation always sees clean renders)
    blur_max: float = 0.0
    noise_max: float = 0.0
    degrade_prob: float = 0.5
    # world only: every generated_every-th training image is a world item redrawn by this model (SDEdit at a
    # strength in generated_strength), so the CLIP learns what generated images look like; "" = off.
    # See bestshot.train.generated. The pool (generated_pool items) is cached in out_dir.
    generated_model: str = ""
    generated_pool: int = 4096
    generated_strength: tuple[float, float] = (0.2, 0.4)
    generated_every: int = 2
    # learning to rank (world only, see bestshot.train.candidates): ranked_prompts training prompts, each with
    # ranked_candidates images drawn by ranked_model and the oracle's verdict on each; every step also shows
    # ranked_groups prompts whose candidates the oracle both accepts and rejects, and the loss asks the
    # prompt's text to score an accepted candidate first (softmax over the group, all accepted ones
    # positive), weighted by ranked_weight. ranked_holdout of the prompts are kept aside to measure how often
    # the top-scored candidate is an accepted one. The set is cached (ranked_cache, default in out_dir).
    ranked_model: str = ""
    ranked_prompts: int = 360
    ranked_candidates: int = 8
    ranked_seed: int = 0
    ranked_groups: int = 8
    ranked_weight: float = 1.0
    ranked_holdout: float = 0.15
    ranked_cache: str = ""


class WorldHardNegatives(torch.utils.data.Dataset):
    """World items with hard-negative captions: ``(image, caption, [neg captions])``, deterministic per i."""

    def __init__(
        self,
        length: int,
        size: int,
        seed: int,
        k: int,
        n_shape: int = 1,
        every_object: bool = False,
        object_weights: dict[int, float] | None = None,
    ):
        self.length, self.size, self.seed, self.k, self.n_shape = length, size, seed, k, n_shape
        self.every_object, self.object_weights = every_object, object_weights

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        from bestshot import world as W

        scene, rng = W.scene_for(self.seed, i, object_weights=self.object_weights)
        pos, negs = hard_negative_captions(scene, rng, self.k, self.n_shape, self.every_object)
        return W.image_to_tensor(W.render(scene, self.size)), pos, negs


# ------------------------------------------------------------------------------------------- model
def _vision_config(cfg: ClipTrainConfig, projection_dim: int) -> dict:
    if cfg.vision_hidden % cfg.vision_heads:
        raise BestshotError(
            f"vision_hidden {cfg.vision_hidden} is not a multiple of vision_heads {cfg.vision_heads} "
            "— pick a head count that divides it"
        )
    return dict(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        projection_dim=projection_dim,
    )


def build_clip(cfg: ClipTrainConfig) -> CLIPModel:
    tok = build_clip_tokenizer()
    text = dict(
        vocab_size=len(tok),
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=77,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        projection_dim=cfg.projection_dim,
    )
    config = CLIPConfig(
        text_config=text, vision_config=_vision_config(cfg, cfg.projection_dim), projection_dim=cfg.projection_dim
    )
    return CLIPModel(config)


def clip_with_text_from(cfg: ClipTrainConfig, folder: str | Path):
    """(model, tokenizer): a freshly initialised image tower sized by ``cfg`` joined to the text tower, text
    projection, logit scale and tokenizer of the CLIP folder ``folder`` (see ClipTrainConfig.init_text_from)."""
    from transformers import CLIPTokenizer

    if not Path(folder).is_dir():
        raise BestshotError(
            f"init_text_from {folder} is not a CLIP folder — pass a folder written by `bestshot train clip`"
        )
    src = CLIPModel.from_pretrained(str(folder), dtype=torch.float32)
    tok = CLIPTokenizer.from_pretrained(str(folder))
    dim = src.config.projection_dim
    config = CLIPConfig(
        text_config=src.config.text_config.to_dict(), vision_config=_vision_config(cfg, dim), projection_dim=dim
    )
    model = CLIPModel(config)
    model.text_model.load_state_dict(src.text_model.state_dict())
    model.text_projection.load_state_dict(src.text_projection.state_dict())
    with torch.no_grad():
        model.logit_scale.copy_(src.logit_scale)
    return model, tok


def _collate(items):
    if len(items[0]) == 3:
        imgs, caps, negs = zip(*items)
        return torch.stack(imgs), list(caps), [n for ns in negs for n in ns]
    imgs, caps = zip(*items)
    return torch.stack(imgs), list(caps), []


class TokenizingCollate:
    """Batches as ``(images, captions, negatives, encoding)``: the captions and negatives are tokenized here, in
    the DataLoader's workers, not in the training loop (a batch of 256 with 12 negatives is ~3,300 captions,
    ~0.2 s of tokenizing that would otherwise stall the GPU every step)."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, items):
        imgs, caps, negs = _collate(items)
        return imgs, caps, negs, self.tok(caps + negs, padding=True, truncation=True, return_tensors="pt")


def _object_weights(cfg: ClipTrainConfig) -> dict[int, float] | None:
    if not cfg.object_weights:
        return None
    w = [float(x) for x in cfg.object_weights]
    if len(w) != 3 or min(w) < 0 or sum(w) <= 0:
        raise BestshotError(
            f"object_weights {list(cfg.object_weights)} must be three weights >= 0 for 1, 2 and 3 "
            "objects, not all zero — e.g. [0.3, 0.5, 0.2]"
        )
    return {1: w[0], 2: w[1], 3: w[2]}


def _dataset(cfg: ClipTrainConfig, length: int, seed: int, generated: bool = False):
    if cfg.dataset == "world" and cfg.hard_negatives > 0:
        ds = WorldHardNegatives(
            length,
            cfg.img_size,
            seed,
            cfg.hard_negatives,
            cfg.shape_negatives,
            cfg.shape_negatives_every_object,
            _object_weights(cfg),
        )
        if generated and cfg.generated_model:
            from bestshot.train.generated import GeneratedWorldHardNegatives, Interleaved, build_pool

            pool_seed = seed + 104729  # world items the render stream does not start with
            pool = build_pool(
                cfg.generated_model,
                pool_seed,
                cfg.generated_pool,
                cfg.img_size,
                tuple(cfg.generated_strength),
                cache=Path(cfg.out_dir) / "generated_pool.safetensors",
                device="auto",
            )
            gen = GeneratedWorldHardNegatives(
                pool, pool_seed, cfg.hard_negatives, cfg.shape_negatives, cfg.shape_negatives_every_object
            )
            ds = Interleaved(ds, gen, cfg.generated_every)
        return ds
    if generated and cfg.generated_model:
        raise BestshotError("generated_model needs dataset: world with hard_negatives > 0 (it redraws world items)")
    from bestshot.train.data import build_dataset

    return build_dataset(cfg.dataset, cfg.img_size, length, seed)


def degrade(
    images: torch.Tensor, blur_max: float, noise_max: float, prob: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Blur and grain a batch of [-1, 1] images, a random amount per image (see ClipTrainConfig.blur_max).

    Why: the scorer ranks *generated* images, whose shapes have soft, rounded edges and whose flat areas
    carry grain; a CLIP that only ever saw exact renders read generated shapes far worse than rendered ones."""
    B, C, H, W = images.shape
    out = images
    if blur_max > 0:
        sigma = torch.rand(B, generator=generator) * blur_max
        sigma = torch.where(torch.rand(B, generator=generator) < prob, sigma, torch.zeros(B))
        r = max(1, int(math.ceil(2 * blur_max)))
        x = torch.arange(-r, r + 1, dtype=images.dtype)
        k = torch.exp(-(x[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B*C, 2r+1); sigma ~0 gives a delta
        y = F.pad(out.reshape(1, B * C, H, W), (r, r, r, r), mode="replicate")
        y = F.conv2d(y, k[:, None, None, :], groups=B * C)
        y = F.conv2d(y, k[:, None, :, None], groups=B * C)
        out = y.reshape(B, C, H, W)
    if noise_max > 0:
        std = torch.rand(B, generator=generator) * noise_max
        std = torch.where(torch.rand(B, generator=generator) < prob, std, torch.zeros(B))
        out = out + std.view(B, 1, 1, 1) * torch.randn(out.shape, generator=generator)
    return out.clamp(-1, 1)


def clip_loss(model: CLIPModel, tok, images, captions, negatives, k: int, enc=None):
    """Symmetric InfoNCE; image row i also scores its k hard-negative captions. ``enc``: the captions and
    negatives already tokenized (:class:`TokenizingCollate`); else ``tok`` tokenizes them here."""
    dev = model.logit_scale.device
    if enc is None:
        enc = tok(captions + negatives, padding=True, truncation=True, return_tensors="pt")
    enc = enc.to(dev)
    img = image_features(model, to_clip_pixels(images.to(dev)))
    txt = text_features(model, enc.input_ids, enc.attention_mask)
    return contrastive_loss(img, txt, model.logit_scale, k, bool(negatives))


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, k: int, negatives: bool):
    """``clip_loss`` on projected features (normalised here, in float32): ``img`` (B, D); ``txt`` (B + B*k, D),
    the B positives first, then image 0's k negatives, image 1's, ..."""
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    dev = img.device
    scale = logit_scale.exp().clamp(max=100)
    B = img.shape[0]
    pos, neg = txt[:B], txt[B:]
    logits = scale * img @ pos.T
    labels = torch.arange(B, device=dev)
    loss_t = F.cross_entropy(logits.T, labels)
    if negatives:
        neg_logits = scale * torch.einsum("bd,bkd->bk", img, neg.view(B, k, -1))
        loss_i = F.cross_entropy(torch.cat([logits, neg_logits], 1), labels)
    else:
        loss_i = F.cross_entropy(logits, labels)
    return (loss_i + loss_t) / 2, logits, (neg_logits if negatives else None)


def ranked_loss(model: CLIPModel, tok, cs, groups: list[int], degrade_cfg: tuple[float, float, float] | None = None):
    """Multi-positive softmax over each prompt's candidates: -log P(an oracle-accepted candidate is ranked first)."""
    dev = model.logit_scale.device
    K = cs.images.shape[1]
    imgs = cs.images[groups].flatten(0, 1).float() / 127.5 - 1.0
    size = model.config.vision_config.image_size
    if imgs.shape[-1] != size or imgs.shape[-2] != size:  # candidates drawn at another size than the CLIP reads
        imgs = F.interpolate(imgs, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    if degrade_cfg:
        imgs = degrade(imgs, *degrade_cfg)
    img = F.normalize(image_features(model, to_clip_pixels(imgs.to(dev))), dim=-1).view(len(groups), K, -1)
    enc = tok([cs.prompts[p] for p in groups], padding=True, truncation=True, return_tensors="pt").to(dev)
    txt = F.normalize(text_features(model, enc.input_ids, enc.attention_mask), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * torch.einsum("gkd,gd->gk", img, txt)
    accepted = cs.verdicts[groups][:, :, 0].to(dev)
    loss = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~accepted, float("-inf")), 1)
    return loss.mean(), logits, accepted


@torch.no_grad()
def ranked_top1(model: CLIPModel, tok, cs, groups: list[int], batch: int = 32) -> float:
    """How often the top-scored candidate of a mixed group is one the oracle accepts (``groups`` not empty)."""
    was = model.training
    model.eval()
    hits = 0
    for i in range(0, len(groups), batch):
        _, logits, accepted = ranked_loss(model, tok, cs, groups[i : i + batch])
        hits += accepted.gather(1, logits.argmax(1, keepdim=True)).sum().item()
    model.train(was)
    return hits / len(groups)


def _ranked_split(cfg: ClipTrainConfig):
    """(candidate set, training groups, held-out groups) or (None, [], []) when ranking is off."""
    if not cfg.ranked_model:
        return None, [], []
    if cfg.dataset != "world":
        raise BestshotError("ranked_model needs dataset: world (the oracle judges world prompts)")
    if not 0 <= cfg.ranked_holdout < 1 or cfg.ranked_groups < 1:
        raise BestshotError("ranked_holdout must be in [0, 1) and ranked_groups >= 1, e.g. 0.15 and 8")
    from bestshot.train.candidates import mixed_groups, training_set

    cs = training_set(
        cfg.ranked_model,
        cfg.ranked_prompts,
        cfg.ranked_seed,
        cfg.ranked_candidates,
        cache=cfg.ranked_cache or Path(cfg.out_dir) / "ranked_pool.safetensors",
        device=None,
    )
    mixed = mixed_groups(cs)
    cut = len(cs) - int(round(cfg.ranked_holdout * len(cs)))  # the last prompts are held out
    train, held = [p for p in mixed if p < cut], [p for p in mixed if p >= cut]
    if not train:
        raise BestshotError(
            f"none of the {len(cs)} ranking prompts has both accepted and rejected candidates — "
            "raise ranked_prompts or ranked_candidates"
        )
    return cs, train, held


def make_optimizer(model: CLIPModel, cfg: ClipTrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (the text side frozen first if ``cfg.freeze_text``), with weight
    decay on weight matrices only (not on embeddings, norms or biases)."""
    if cfg.freeze_text:
        model.text_model.requires_grad_(False)
        model.text_projection.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in params if not (p.ndim >= 2 and "embedding" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def training_loader(cfg: ClipTrainConfig, tok) -> torch.utils.data.DataLoader:
    """The training stream: ``steps`` batches of ``(images, captions, negatives, encoding)`` in a fixed order."""
    ds = _dataset(cfg, cfg.steps * cfg.batch_size, cfg.seed, generated=True)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=False,
        collate_fn=TokenizingCollate(tok),
        drop_last=True,
        num_workers=cfg.num_workers,
    )


def negatives_per_image(cfg: ClipTrainConfig) -> int:
    """How many hard-negative captions each training image brings (world only)."""
    return cfg.hard_negatives if cfg.dataset == "world" and cfg.hard_negatives > 0 else 0


def learning_rate(cfg: ClipTrainConfig, step: int, elapsed: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay over ``steps`` — or, with ``schedule_by_time``,
    over the share of the ``max_minutes`` budget spent (whichever of steps and time runs out first)."""
    if not cfg.schedule_by_time or step < cfg.warmup_steps:
        return lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps)
    scale = 10_000
    done = max(step / cfg.steps, elapsed / (60 * cfg.max_minutes))
    return lr_at(min(scale, int(done * scale)), cfg.lr, 0, scale)


@torch.no_grad()
def evaluate(model: CLIPModel, tok, cfg: ClipTrainConfig) -> dict:
    """Held-out retrieval: image→text top-1 among the batch's captions, and positive vs its hard negatives."""
    model.eval()
    ds = _dataset(cfg, cfg.eval_size, cfg.seed + 7919)  # a seed never used for training
    imgs, caps, negs = _collate([ds[i] for i in range(len(ds))])
    k = len(negs) // len(caps) if negs else 0
    _, logits, neg_logits = clip_loss(model, tok, imgs, caps, negs, k)
    uniq = {c: i for i, c in enumerate(caps)}  # duplicate captions count as correct
    pred = logits.argmax(1)
    top1 = sum(caps[p] == caps[i] for i, p in enumerate(pred.tolist())) / len(caps)
    out = {"image_to_text_top1": top1, "batch": len(caps)}
    if neg_logits is not None:
        diag = logits.diag()[:, None]
        out["vs_hard_negatives"] = (diag > neg_logits).all(1).float().mean().item()
        out["vs_each_hard_negative"] = (diag > neg_logits).float().mean().item()
    model.train()
    del uniq
    return out


def train_clip(cfg: ClipTrainConfig) -> dict:
    """Train, evaluate and save a CLIP folder (model + tokenizer + preprocessor) to ``cfg.out_dir``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.img_size % cfg.patch_size:
        raise BestshotError(
            f"img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size} — pick a divisor"
        )
    if cfg.generated_model and cfg.generated_every < 1:
        raise BestshotError("generated_every must be >= 1 (1 = every image generated, 2 = every other one)")
    if cfg.blur_max < 0 or cfg.noise_max < 0 or not 0 <= cfg.degrade_prob <= 1:
        raise BestshotError(
            "blur_max and noise_max must be >= 0 and degrade_prob in [0, 1] — e.g. blur_max: 1.0, "
            "noise_max: 0.08, degrade_prob: 0.5"
        )
    if cfg.init_from and cfg.init_text_from:
        raise BestshotError(
            "init_from and init_text_from exclude each other — init_from continues a whole CLIP, "
            "init_text_from starts a new image tower beside a trained text tower"
        )
    if cfg.schedule_by_time and not cfg.max_minutes:
        raise BestshotError("schedule_by_time needs max_minutes > 0 (the budget the schedule runs over)")
    if cfg.init_text_from:
        model, tok = clip_with_text_from(cfg, cfg.init_text_from)
    elif cfg.init_from:
        if not Path(cfg.init_from).is_dir():
            raise BestshotError(
                f"init_from {cfg.init_from} is not a CLIP folder — pass a folder written by `bestshot train clip`"
            )
        from transformers import CLIPTokenizer

        model = CLIPModel.from_pretrained(cfg.init_from, dtype=torch.float32)
        tok = CLIPTokenizer.from_pretrained(cfg.init_from)
    else:
        tok = build_clip_tokenizer(cfg.max_length)
        model = build_clip(cfg)
    from bestshot.models.loader import resolve_device

    device = resolve_device()
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    loader = training_loader(cfg, tok)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
    k = negatives_per_image(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranked, rank_train, rank_held = _ranked_split(cfg)
    rank_rng = random.Random(cfg.seed)
    rank_before = ranked_top1(model, tok, ranked, rank_held) if ranked is not None and rank_held else None
    degrade_cfg = (cfg.blur_max, cfg.noise_max, cfg.degrade_prob) if cfg.blur_max > 0 or cfg.noise_max > 0 else None
    losses: list[tuple[int, float]] = []
    t0 = time.time()
    step = 0
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("clip"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task("clip", total=cfg.steps, loss="-")
        for imgs, caps, negs, enc in loader:
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, step, time.time() - t0)
            if cfg.blur_max > 0 or cfg.noise_max > 0:
                imgs = degrade(imgs, cfg.blur_max, cfg.noise_max, cfg.degrade_prob)
            with amp:
                loss, _, _ = clip_loss(model, tok, imgs, caps, negs, k, enc)
                if ranked is not None:
                    groups = rank_rng.sample(rank_train, min(cfg.ranked_groups, len(rank_train)))
                    loss = loss + cfg.ranked_weight * ranked_loss(model, tok, ranked, groups, degrade_cfg)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            losses.append((step, loss.item()))
            bar.update(task, advance=1, loss=f"{loss.item():.3f}")
            if step % cfg.log_every == 0:
                held = ""
                if ranked is not None and rank_held and step % (10 * cfg.log_every) == 0:
                    held = f" ranked held-out top-1 {ranked_top1(model, tok, ranked, rank_held):.3f}"
                print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s{held}", flush=True)
            if step >= cfg.steps or (cfg.max_minutes and time.time() - t0 > 60 * cfg.max_minutes):
                break
    elapsed = time.time() - t0
    metrics = evaluate(model, tok, cfg)
    if ranked is not None:
        metrics.update(
            ranked_heldout_groups=len(rank_held),
            ranked_train_groups=len(rank_train),
            ranked_top1_before=rank_before,
            ranked_top1=ranked_top1(model, tok, ranked, rank_held) if rank_held else None,
        )
    metrics.update(
        steps=step,
        seconds=round(elapsed, 1),
        final_loss=sum(v for _, v in losses[-20:]) / max(1, len(losses[-20:])),
        device=device.type,
    )
    save_clip_folder(model.cpu(), tok, cfg, out)
    atomic_write_text(out / "metrics.json", jsonio.dumps(metrics, indent=2))
    plot_losses(losses, out / "loss.png", "CLIP InfoNCE")
    return metrics


def save_clip_folder(model: CLIPModel, tok, cfg: ClipTrainConfig, out: Path) -> None:
    model.save_pretrained(out)
    tok.save_pretrained(out)
    image_processor(cfg.img_size).save_pretrained(out)
    atomic_write_text(out / "bestshot_clip_config.json", jsonio.dumps(dataclasses.asdict(cfg), indent=2))


def run(config: str | None = None, **overrides) -> dict:
    return train_clip(load_config(ClipTrainConfig, config, **overrides))
