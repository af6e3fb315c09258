"""``bestshot train ddpm``: a CLIP-conditioned pixel-space UNet trained with the DDPM objective.

The network predicts the noise (``prediction_type: epsilon``, the DDPM paper) or the velocity
``v = sqrt(a) * eps - sqrt(1 - a) * x0`` (``v_prediction``, Salimans & Ho 2022). With epsilon, the loss
at high noise levels hardly depends on the prompt (the noise is almost the input itself), so a short run
learns to ignore the conditioning where the layout and colours are decided; v keeps a strong,
prompt-dependent target there. Min-SNR weighting (Hang et al. 2023) is applied in either case.

nanoGPT-style single loop. Everything random in a step (timesteps, noise, context dropout) is drawn from
a generator seeded by (seed, step) and step ``s`` always sums the micro-batches ``s*A .. s*A+A-1`` (``A`` =
``grad_accum``; micro-batch ``m`` is items ``[m*B, (m+1)*B)`` of the dataset), so a run resumed from a
checkpoint continues exactly as if it had never stopped. Checkpoints (model, EMA, optimizer, step, config,
loss history) are written atomically every ``ckpt_every`` steps to ``latest.pt``; killing the run loses at
most that interval. ``ckpt_keep_last`` keeps the last K of them in ``checkpoints/step_*.pt`` and
``ckpt_every_epochs`` one every N epochs for good (``checkpoints/epoch_*.pt``, as the seed keeps every 5
epochs); any of them can be sampled or exported like the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPModel, CLIPTokenizer

from bestshot import jsonio
from bestshot.errors import BestshotError
from bestshot.train.common import (
    EMA,
    atomic_torch_save,
    atomic_write_text,
    check_clip_spec,
    load_config,
    lr_at,
    plot_losses,
)

CKPT_NAME = "latest.pt"
# fields that may change between a checkpoint and a resumed run (length/logistics, not the model or data)
RESUMABLE_FIELDS = {
    "steps",
    "epochs",
    "max_minutes",
    "ckpt_every",
    "log_every",
    "num_workers",
    "threads",
    "out_dir",
    "init_from",
    "ckpt_keep_last",
    "ckpt_every_epochs",
}


@dataclass
class DDPMConfig:
    # data
    dataset: str = "world"  # world | world:1-2 | fashion-mnist | folder | .csv (see bestshot.train.data)
    dataset_length: int = 1_000_000  # the world is unlimited; this is just the index range used
    # image folders: caption images without a .txt from their class folder, e.g. "a photo of a {class}"
    # (cond: image_embed needs no captions at all)
    class_caption: str = ""
    img_size: int = 32
    channels: int = 3
    # conditioning
    clip: str = "runs/embedded/clip"  # a CLIP folder written by `bestshot train clip`
    cond: str = "text_tokens"  # text_tokens | text_embed | image_embed
    class_embed: bool = True  # also feed the pooled CLIP embedding through the UNet's class embedding
    embed_cache: str = ""  # image_embed only: a cache written by `bestshot train embed`
    c_drop_prob: float = 0.1
    # diffusion
    timesteps: int = 1000
    beta_schedule: str = "linear"  # linear | scaled_linear | squaredcos_cap_v2
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # epsilon | v_prediction
    min_snr_gamma: float = 5.0  # Min-SNR loss weighting (0 = plain MSE); converges faster
    # model
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, False, True)  # cross-attention per resolution
    attention_head_dim: int = 32
    # UNet widths (0 = diffusers' default): width of the timestep embedding (default 4x the first
    # block's channels), and of the conditioning seen by cross-attention (a learnt projection of the CLIP
    # embedding to c_embed_dim; default: the CLIP's own width, no projection)
    t_embed_dim: int = 0
    c_embed_dim: int = 0
    # augmentation of the training images (applied on the fly, the same on a resumed run): horizontal flip
    # with this probability, random crop after reflect-padding each side by aug_crop_pad pixels.
    # With cond: image_embed and an embed_cache, the embeddings are those of the unaugmented images.
    aug_hflip: float = 0.0
    aug_crop_pad: int = 0
    # optimisation
    batch_size: int = 64  # per optimiser step and process, before gradient accumulation
    grad_accum: int = 1  # micro-batches of batch_size summed into one optimiser step
    steps: int = 2000
    epochs: float = 0.0  # if > 0, overrides steps: epochs * dataset_length / batch_size
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    amp: str = "auto"  # auto (bf16 on CUDA only) | bf16 | none
    # logistics
    ckpt_every: int = 100  # steps between checkpoints (latest.pt is replaced each time)
    ckpt_keep_last: int = 0  # also keep the last K of them as checkpoints/step_NNNNNNNN.pt (0 = none)
    ckpt_every_epochs: float = 0.0  # and keep one every N epochs for good, checkpoints/epoch_NNNN.pt (0 = none)
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall time; 0 = no limit
    log_every: int = 10
    num_workers: int = 0
    threads: int = 0
    seed: int = 0
    out_dir: str = "runs/ddpm"
    # a checkpoint (file or run folder) whose EMA weights start a new run (fine-tuning), or an exported pipeline
    # folder (its unet/, e.g. the shipped embedded model) — same architecture, the objective may differ
    init_from: str = ""

    def total_steps(self, n_items: int | None = None, world_size: int = 1) -> int:
        """Planned optimiser steps: ``steps``, or with ``epochs`` > 0 ``epochs × ceil(n_items / (batch_size ×
        grad_accum × world_size))``.

        ``n_items`` is the real length of the dataset (a folder of 8 images is 8, not ``dataset_length``);
        without it ``dataset_length`` stands in (the procedural world has exactly that many items)."""
        if self.epochs <= 0:
            return self.steps
        n = self.dataset_length if n_items is None else n_items
        per_step = self.batch_size * self.grad_accum * world_size
        return max(1, math.ceil(self.epochs * math.ceil(n / per_step) - 1e-9))

    def validate(self) -> None:
        if self.cond not in ("text_tokens", "text_embed", "image_embed"):
            raise BestshotError(f"cond {self.cond!r} is not supported — use text_tokens, text_embed or image_embed")
        if len(self.attention_levels) != len(self.block_out_channels):
            raise BestshotError(
                "attention_levels needs one true/false per entry of block_out_channels — fix the config"
            )
        if self.img_size % 2 ** (len(self.block_out_channels) - 1):
            raise BestshotError(
                f"img_size {self.img_size} must be divisible by {2 ** (len(self.block_out_channels) - 1)}"
            )
        if not Path(self.clip).is_dir():
            raise BestshotError(
                f"CLIP folder {self.clip} not found — train one with `bestshot train clip` or set clip:"
            )
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise BestshotError(f"prediction_type {self.prediction_type!r} — use epsilon or v_prediction")
        if self.init_from and not Path(self.init_from).exists():
            raise BestshotError(
                f"init_from {self.init_from} not found — give a checkpoint file or run folder, or leave it empty"
            )
        if self.amp not in ("auto", "bf16", "none"):
            raise BestshotError(f"amp {self.amp!r} — use auto, bf16 or none")
        if not 0 <= self.aug_hflip <= 1:
            raise BestshotError(f"aug_hflip {self.aug_hflip} is a probability — use a value in [0, 1]")
        for name in ("aug_crop_pad", "t_embed_dim", "c_embed_dim", "ckpt_keep_last"):
            if getattr(self, name) < 0:
                raise BestshotError(f"{name} {getattr(self, name)} must be >= 0 (0 = off/default)")
        if self.aug_crop_pad >= self.img_size:
            raise BestshotError(f"aug_crop_pad {self.aug_crop_pad} must be smaller than img_size {self.img_size}")
        if self.grad_accum < 1 or self.batch_size < 1:
            raise BestshotError("batch_size and grad_accum must be >= 1")
        if self.ckpt_every_epochs < 0:
            raise BestshotError(f"ckpt_every_epochs {self.ckpt_every_epochs} must be >= 0 (0 = no epoch checkpoints)")


# ------------------------------------------------------------------------------------------ builders
def load_clip(path: str | Path) -> tuple[CLIPModel, CLIPTokenizer]:
    check_clip_spec(path)
    clip = CLIPModel.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
    return clip, CLIPTokenizer.from_pretrained(path)


def build_unet(cfg: DDPMConfig, clip_config) -> UNet2DConditionModel:
    xdim = clip_config.text_config.hidden_size if cfg.cond == "text_tokens" else clip_config.projection_dim
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    groups = 32 if all(c % 32 == 0 for c in cfg.block_out_channels) else 8
    # c_embed_dim: diffusers' encoder_hid_proj maps the CLIP's xdim to the width cross-attention works in
    proj = (
        dict(cross_attention_dim=cfg.c_embed_dim, encoder_hid_dim=xdim, encoder_hid_dim_type="text_proj")
        if cfg.c_embed_dim
        else dict(cross_attention_dim=xdim)
    )
    return UNet2DConditionModel(
        sample_size=cfg.img_size,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        **proj,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=groups,
        time_embedding_dim=cfg.t_embed_dim or None,
        class_embed_type="projection" if cfg.class_embed else None,
        projection_class_embeddings_input_dim=clip_config.projection_dim if cfg.class_embed else None,
    )


def augment(x: torch.Tensor, hflip: float, crop_pad: int, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip (probability ``hflip``) and random crop after reflect-padding ``crop_pad`` pixels,
    drawn per image from ``g`` (a resumed run draws the same)."""
    b, _, h, w = x.shape
    if hflip > 0:
        flip = (torch.rand(b, generator=g) < hflip).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if crop_pad > 0:
        p = crop_pad
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        dy = torch.randint(0, 2 * p + 1, (b,), generator=g).tolist()
        dx = torch.randint(0, 2 * p + 1, (b,), generator=g).tolist()
        x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    return x


def noise_scheduler(cfg: DDPMConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        clip_sample=True,
    )


def sampling_scheduler(cfg: DDPMConfig) -> DDIMScheduler:
    """DDIM with trailing timesteps: good at ~20 steps, starts from pure noise."""
    return DDIMScheduler(
        num_train_timesteps=cfg.timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        clip_sample=True,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    )


@torch.no_grad()
def encode_text(clip: CLIPModel, tok: CLIPTokenizer, texts: list[str], cond: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder_hidden_states, normalised pooled embedding) exactly as BestshotWorldPipeline computes them."""
    enc = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    out = clip.text_model(input_ids=enc.input_ids.to(clip.device))
    pooled = F.normalize(clip.text_projection(out.pooler_output), dim=-1)
    return (out.last_hidden_state if cond == "text_tokens" else pooled[:, None, :]), pooled


@torch.no_grad()
def encode_images(clip: CLIPModel, images: torch.Tensor, pre=None) -> torch.Tensor:
    """Normalised CLIP image embeddings of [-1, 1] images of any size: ``pre`` (a
    :class:`~bestshot.models.clip_preprocess.ClipPreprocess`, default: from the CLIP's config) resizes them
    to the CLIP's own resolution and normalises them as its processor does."""
    from bestshot.models.clip_preprocess import clip_preprocess
    from bestshot.models.embedded_clip import image_features

    pre = pre or clip_preprocess(None, clip)
    return F.normalize(image_features(clip, pre(images).to(clip.dtype)), dim=-1)


# ----------------------------------------------------------------------------------------- checkpoint
def check_compatible(saved: dict, cfg: DDPMConfig, path: Path) -> None:
    """A checkpoint from another config is refused with the mismatching fields named."""
    now = dataclasses.asdict(cfg)
    # a field added after the checkpoint was written is compared with its default (the old behaviour)
    defaults = {f.name: f.default for f in dataclasses.fields(DDPMConfig) if f.default is not dataclasses.MISSING}
    diffs = []
    for k, v in now.items():
        if k in RESUMABLE_FIELDS:
            continue
        old = saved.get(k, defaults.get(k, "<missing>"))
        if isinstance(old, list):
            old = tuple(old)
        if isinstance(v, list):
            v = tuple(v)
        if old != v:
            diffs.append(f"{k}: checkpoint {old!r} vs config {v!r}")
    if diffs:
        raise BestshotError(
            f"checkpoint {path} was made with a different config ({'; '.join(diffs)}) — "
            f"use the original config or another out_dir"
        )


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / CKPT_NAME
    if not path.is_file():
        raise BestshotError(f"no checkpoint at {path} — train first with `bestshot train ddpm --config ...`")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise BestshotError(
            f"{path} is not a readable bestshot checkpoint ({type(e).__name__}) — delete it and "
            "resume from an older one"
        ) from None


def init_weights(unet: UNet2DConditionModel, path: str | Path) -> None:
    """Start a run from another run's EMA weights, or an exported pipeline's UNet (same architecture)."""
    if (Path(path) / "unet").is_dir() and not (Path(path) / CKPT_NAME).exists():  # an exported pipeline folder
        from safetensors.torch import load_file

        files = sorted((Path(path) / "unet").glob("*.safetensors"))
        if not files:
            raise BestshotError(f"init_from {path}/unet holds no .safetensors weights — export the model again")
        state = {k: v.float() for f in files for k, v in load_file(str(f)).items()}  # one file, or shards
    else:
        ck = load_checkpoint(path)
        state = ck["ema"]["shadow"] if "ema" in ck else ck["model"]
    try:
        unet.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()[:200]
        raise BestshotError(
            f"init_from {path} has another UNet architecture ({first}) — use the block_out_channels, "
            f"layers_per_block and attention settings it was trained with"
        ) from None


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        img, cap = self.ds[i][:2]
        return i, img, cap


def _collate(items):
    idx, imgs, caps = zip(*items)
    return torch.tensor(idx), torch.stack(imgs), list(caps)


class _Dist:
    """Data parallelism through accelerate when the run was started by ``accelerate launch`` (or torchrun) with
    several processes; a no-op otherwise. Every process holds the whole model; gradients are averaged across
    processes in backward (DDP); process ``r`` takes micro-batch ``(s*A + k)*W + r`` of step ``s`` (``W``
    processes, ``A`` = grad_accum), so a step always covers the same ``B*A*W`` items. The main process alone
    writes checkpoints, plots and prints."""

    def __init__(self, device: torch.device):
        import os

        self.acc = None
        self.world, self.rank, self.device = 1, 0, device
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator

            self.acc = Accelerator(cpu=device.type == "cpu")
            self.world, self.rank, self.device = self.acc.num_processes, self.acc.process_index, self.acc.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        return self.acc.prepare_model(model) if self.acc else model

    def no_sync(self, model, skip: bool):
        import contextlib

        return self.acc.no_sync(model) if self.acc and skip else contextlib.nullcontext()

    def mean(self, value: float) -> float:
        if not self.acc:
            return value
        return float(self.acc.reduce(torch.tensor([value], device=self.device), "mean").item())

    def any(self, flag: bool) -> bool:
        if not self.acc:
            return flag
        return bool(self.acc.reduce(torch.tensor([float(flag)], device=self.device), "sum").item() > 0)

    def barrier(self) -> None:
        if self.acc:
            self.acc.wait_for_everyone()


# ---------------------------------------------------------------------------------------------- train
def train(cfg: DDPMConfig, resume: bool = False) -> dict:
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from bestshot.models.loader import resolve_device

    dist = _Dist(resolve_device())
    device = dist.device
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    out = Path(cfg.out_dir)
    ckpt_path = out / CKPT_NAME
    existed = ckpt_path.exists()
    dist.barrier()  # every process has looked before the main one can write
    out.mkdir(parents=True, exist_ok=True)

    clip, tok = load_clip(cfg.clip)
    clip.to(device)
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg, clip.config).to(device).train()
    ema = EMA(unet, cfg.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = noise_scheduler(cfg)
    acp = sched.alphas_cumprod.to(device)
    step, losses, elapsed_before = 0, [], 0.0

    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        check_compatible(ck["config"], cfg, ckpt_path)
        unet.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        step, losses, elapsed_before = ck["step"], ck["losses"], ck.get("elapsed", 0.0)
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
    elif existed and not resume:
        raise BestshotError(f"{ckpt_path} exists — pass --resume to continue it, or choose another out_dir")
    elif cfg.init_from:
        init_weights(unet, cfg.init_from)
        ema = EMA(unet, cfg.ema_decay)  # the average starts from the loaded weights
        print(f"initialised from {cfg.init_from}", flush=True)

    cache = None
    from bestshot.models.clip_preprocess import clip_preprocess
    from bestshot.train.data import build_dataset

    pre = clip_preprocess(cfg.clip, clip)
    ds = build_dataset(
        cfg.dataset,
        cfg.img_size,
        cfg.dataset_length,
        cfg.seed,
        captions="optional" if cfg.cond == "image_embed" else "required",
        class_caption=cfg.class_caption,
    )
    if cfg.cond == "image_embed" and cfg.embed_cache:
        from bestshot.train.embed_cache import load_cache

        cache = load_cache(cfg.embed_cache, cfg.dataset, cfg.img_size, cfg.clip, length=len(ds))
    W, r = dist.world, dist.rank
    B, A = cfg.batch_size, cfg.grad_accum
    n = len(ds)
    total = cfg.total_steps(n, W)
    # micro-batch m is items [m*B, (m+1)*B) (mod n); step s sums micro-batches (s*A + k)*W + r, k < A, of process r
    indices = [((m * W + r) * B + j) % n for m in range(step * A, total * A) for j in range(B)]
    loader = torch.utils.data.DataLoader(
        _Indexed(ds), batch_size=B, sampler=indices, num_workers=cfg.num_workers, collate_fn=_collate, drop_last=True
    )
    empty_hidden, empty_pooled = encode_text(clip, tok, [""], cfg.cond)
    history = out / "checkpoints"

    def save(final: bool = False) -> None:
        if not dist.main:
            return
        state = {
            "model": unet.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "config": dataclasses.asdict(cfg),
            "losses": losses,
            "elapsed": elapsed_before + time.time() - t0,
        }
        atomic_torch_save(state, ckpt_path)
        if cfg.ckpt_keep_last:
            history.mkdir(exist_ok=True)
            atomic_torch_save(state, history / f"step_{step:08d}.pt")
            for old in sorted(history.glob("step_*.pt"))[: -cfg.ckpt_keep_last]:
                old.unlink(missing_ok=True)
        plot_losses(losses, out / "loss.png", f"DDPM loss ({cfg.cond})")

    def epoch_of(s: int) -> int:
        """Completed multiples of ckpt_every_epochs after s steps."""
        return int(s * B * A * W / n / cfg.ckpt_every_epochs) if cfg.ckpt_every_epochs else 0

    def save_epoch() -> None:
        if not dist.main:
            return
        history.mkdir(exist_ok=True)
        e = epoch_of(step) * cfg.ckpt_every_epochs
        name = f"epoch_{int(e):04d}.pt" if float(e).is_integer() else f"epoch_{e:09.3f}.pt"
        atomic_torch_save(
            {
                "model": unet.state_dict(),
                "ema": ema.state_dict(),
                "step": step,
                "config": dataclasses.asdict(cfg),
                "epoch": e,
            },
            history / name,
        )

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    t0 = time.time()
    stopped_early = False
    micro, step_loss = 0, 0.0
    model = dist.wrap(unet)  # DDP when several processes, else the UNet itself
    with Progress(
        TextColumn("ddpm"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not dist.main,
    ) as bar:
        task = bar.add_task("ddpm", total=total, completed=step, loss="-")
        for idx, x0, caps in loader:
            if micro == 0:  # one generator per step (and process); the micro-batches of a step draw from it in turn
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 998_244_353 * r)
                opt.zero_grad(set_to_none=True)
                step_loss = 0.0
            x0 = x0.to(device)
            if cfg.aug_hflip or cfg.aug_crop_pad:
                x0 = augment(x0, cfg.aug_hflip, cfg.aug_crop_pad, g)
            b = x0.shape[0]
            t = torch.randint(0, cfg.timesteps, (b,), generator=g).to(device)
            noise = torch.randn(x0.shape, generator=g).to(device)
            drop = (torch.rand(b, generator=g) < cfg.c_drop_prob).to(device)
            if cfg.cond == "image_embed":
                pooled = cache[idx].to(device) if cache is not None else encode_images(clip, x0, pre)
                hidden = pooled[:, None, :]
            else:
                hidden, pooled = encode_text(clip, tok, caps, cfg.cond)
            hidden = torch.where(drop[:, None, None], empty_hidden.to(hidden.dtype).expand_as(hidden), hidden)
            pooled = torch.where(drop[:, None], empty_pooled.expand_as(pooled), pooled)
            xt = (
                sched.add_noise(x0, noise, t.cpu()).to(device)
                if device.type == "cpu"
                else sched.add_noise(x0, noise, t)
            )
            with dist.no_sync(model, skip=micro + 1 < A):  # gradients are averaged once per step
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    pred = model(
                        xt, t, encoder_hidden_states=hidden, class_labels=pooled if cfg.class_embed else None
                    ).sample
                target = noise if cfg.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
                mse = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
                if cfg.min_snr_gamma > 0:  # weight min(snr, gamma) on the x0 error, expressed for eps or v
                    snr = acp[t] / (1 - acp[t])
                    mse = (
                        mse * snr.clamp(max=cfg.min_snr_gamma) / (snr if cfg.prediction_type == "epsilon" else snr + 1)
                    )
                loss = mse.mean() / A
                loss.backward()
            step_loss += loss.item()
            micro += 1
            if micro < A:
                continue
            micro = 0
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps, total)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            opt.step()
            ema.update(unet)
            step += 1
            step_loss = dist.mean(step_loss)
            losses.append((step, step_loss))
            bar.update(task, advance=1, loss=f"{step_loss:.4f}")
            if step % cfg.log_every == 0 and dist.main:
                recent = [v for _, v in losses[-cfg.log_every :]]
                print(f"step {step}/{total} loss {sum(recent) / len(recent):.4f} {time.time() - t0:.0f}s", flush=True)
            if cfg.ckpt_every_epochs and epoch_of(step) > epoch_of(step - 1):
                save_epoch()
            if step % cfg.ckpt_every == 0:
                save()
            if cfg.max_minutes and dist.any(time.time() - t0 > 60 * cfg.max_minutes):  # all stop together
                stopped_early = step < total
                break
    save()
    dist.barrier()
    recent = [v for _, v in losses[-50:]]
    summary = {
        "step": step,
        "total_steps": total,
        "final_loss": sum(recent) / max(1, len(recent)),
        "seconds": round(elapsed_before + time.time() - t0, 1),
        "stopped_early": stopped_early,
    }
    if dist.world > 1:
        summary["processes"] = dist.world
    if dist.main:
        atomic_write_text(out / "summary.json", jsonio.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------------------------- export
def _check_same_text_tower(clip, trained_with, clip_dir: str, trained_dir: str) -> None:
    """The denoiser reads the text tower's outputs: another CLIP may only differ on the image side."""
    a = {**clip.text_model.state_dict(), **clip.text_projection.state_dict()}
    b = {**trained_with.text_model.state_dict(), **trained_with.text_projection.state_dict()}
    # compared at float16 precision: an exported model stores its CLIP in float16
    if a.keys() != b.keys() or any(not torch.equal(a[k].half(), b[k].half()) for k in a):
        raise BestshotError(
            f"{clip_dir} has another text tower than {trained_dir}, the CLIP this denoiser was trained "
            "with — its prompts would mean nothing to the denoiser. Pass a CLIP fine-tuned from "
            f"{trained_dir} with freeze_text: true, or leave --clip out"
        )


def pipeline_from_checkpoint(checkpoint: str | Path, clip_dir: str | None = None, use_ema: bool = True):
    """A BestshotWorldPipeline (EMA weights by default) built in memory from a training checkpoint."""
    from bestshot.models.world_pipeline import BestshotWorldPipeline

    ck = load_checkpoint(checkpoint)
    cfg = load_config(DDPMConfig, None, **ck["config"])
    clip, tok = load_clip(clip_dir or cfg.clip)
    if clip_dir and Path(clip_dir).resolve() != Path(cfg.clip).resolve() and Path(cfg.clip).is_dir():
        _check_same_text_tower(clip, load_clip(cfg.clip)[0], clip_dir, cfg.clip)
    unet = build_unet(cfg, clip.config)
    if use_ema:
        ema = EMA(unet)
        ema.load_state_dict(ck["ema"])
        ema.copy_to(unet)
    else:
        unet.load_state_dict(ck["model"])
    unet.eval()
    return (
        BestshotWorldPipeline(
            unet=unet, scheduler=sampling_scheduler(cfg), clip=clip, tokenizer=tok, conditioning=cfg.cond
        ),
        cfg,
        ck,
    )


def pipeline_from_folder(folder: str | Path, clip_dir: str | None = None):
    """An exported pipeline folder in memory (float32), its CLIP replaced by ``clip_dir`` when given (which
    must share the folder's text tower), and the folder's bestshot_defaults.json."""
    from bestshot.models.loader import dtype_kwargs
    from bestshot.models.world_pipeline import BestshotWorldPipeline

    folder = Path(folder)
    pipe = BestshotWorldPipeline.from_pretrained(folder, **dtype_kwargs(torch.float32))
    if clip_dir:
        clip, _ = load_clip(clip_dir)
        _check_same_text_tower(clip, pipe.clip, clip_dir, str(folder / "clip"))
        pipe.register_modules(clip=clip)
    path = folder / "bestshot_defaults.json"
    return pipe, (json.loads(path.read_text()) if path.exists() else {})


def export(
    checkpoint: str | Path,
    out_dir: str | Path,
    clip_dir: str | None = None,
    fp16: bool = True,
    defaults: dict | None = None,
    spatial_guidance_scale: float | None = None,
    spatial_guidance_end: float | None = None,
    spatial_guidance_every: int | None = None,
    scheduler: str | None = None,
) -> Path:
    """Write a BestshotWorldPipeline folder + bestshot_defaults.json (fp16 storage keeps it small).

    ``checkpoint`` is a training run (its EMA weights are exported) or an exported pipeline folder (re-exported,
    e.g. with another ``clip_dir`` whose image side was trained further; its defaults are kept).
    ``spatial_guidance_scale``, ``spatial_guidance_end`` and ``spatial_guidance_every`` go into model_index.json
    (None: the pipeline's default for a run, the folder's own for a folder). ``scheduler`` (a bestshot name:
    ddim, dpmpp_2m, unipc, ...) replaces the folder's sampler and becomes its default for generate."""
    import shutil
    import tempfile

    from bestshot.models.world_pipeline import DEFAULTS, check_guidance

    if (Path(checkpoint) / "model_index.json").exists():
        pipe, base = pipeline_from_folder(checkpoint, clip_dir)
    else:
        pipe, cfg, ck = pipeline_from_checkpoint(checkpoint, clip_dir)
        base = {
            **DEFAULTS,
            "height": cfg.img_size,
            "width": cfg.img_size,
            "trained_steps": ck["step"],
            "conditioning": cfg.cond,
            "dataset": cfg.dataset,
        }
    given = {
        "spatial_guidance_scale": spatial_guidance_scale,
        "spatial_guidance_end": spatial_guidance_end,
        "spatial_guidance_every": spatial_guidance_every,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if given:  # checked as the pipeline checks them, together with the settings the folder keeps
        final = {
            k: pipe.config[k] for k in ("spatial_guidance_scale", "spatial_guidance_end", "spatial_guidance_every")
        }
        final.update(given)
        try:
            check_guidance(
                final["spatial_guidance_scale"], final["spatial_guidance_end"], final["spatial_guidance_every"]
            )
        except ValueError as e:
            raise BestshotError(
                f"{e} (export --spatial-guidance, --spatial-guidance-end, --spatial-guidance-every)"
            ) from None
        pipe.register_to_config(**{k: int(v) if k == "spatial_guidance_every" else float(v) for k, v in given.items()})
    defaults = dict(defaults or {})
    if scheduler:
        from bestshot.models.loader import set_scheduler
        from bestshot.schedulers import scheduler_name

        set_scheduler(pipe, scheduler)  # an unknown or unfit name is a BestshotError naming the choices
        defaults["scheduler"] = scheduler_name(scheduler)
    if fp16:
        pipe.to(torch.float16)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=out_dir.name + ".tmp"))
    pipe.save_pretrained(tmp, safe_serialization=True)
    for cfg_file in [tmp / "model_index.json", *tmp.glob("*/config.json"), *tmp.glob("*/scheduler_config.json")]:
        conf = json.loads(cfg_file.read_text())  # a folder loaded from disk records where it came from: drop it
        if conf.pop("_name_or_path", None) is not None:
            cfg_file.write_text(jsonio.dumps(conf, indent=2, sort_keys=True) + "\n")
    d = {**base, **defaults, "dtype_cpu": "float32"}
    (tmp / "bestshot_defaults.json").write_text(jsonio.dumps(d, indent=2))
    # make clip/ a complete CLIP folder for scorers (preprocessor + tokenizer files beside the weights), and
    # add vocab.json/merges.txt to tokenizer/ for transformers versions that do not read tokenizer.json
    from bestshot.models.clip_tokenizer import write_tokenizer_files
    from bestshot.models.embedded_clip import image_processor

    image_processor(pipe.clip.config.vision_config.image_size).save_pretrained(tmp / "clip")
    pipe.tokenizer.save_pretrained(tmp / "clip")
    for sub in ("clip", "tokenizer"):
        write_tokenizer_files(tmp / sub)
    keep = [
        p
        for p in [Path("TRAINING.md"), *(p.relative_to(out_dir) for p in out_dir.glob("*.png"))]
        if (out_dir / p).exists()
    ]  # the model card and its plots survive a re-export
    for p in keep:
        shutil.copy(out_dir / p, tmp / p)
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
    return out_dir


# the CLIP-guided DDPM's original config keys, accepted as names of DDPMConfig's fields
ALIASES = {
    "img_channels": "channels",
    "down_channels": "block_out_channels",
    "learning_rate": "lr",
    "clip_model": "clip",
}


def load_ddpm_config(config: str | os.PathLike | None = None, **overrides) -> DDPMConfig:
    """The YAML config (original key names in :data:`ALIASES` accepted) plus keyword overrides."""
    from bestshot.yaml_io import read_yaml_mapping

    data = (
        read_yaml_mapping(config, "pass an existing YAML file to --config (see configs/embedded/*.yaml)")
        if config
        else {}
    )
    for old, new in ALIASES.items():
        if old in data:
            if new in data and data[new] != data[old]:
                raise BestshotError(
                    f"the config sets both {old} and {new} (its new name) to different values — keep one"
                )
            data[new] = data.pop(old)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return load_config(DDPMConfig, None, **data)


def run(config: str | None = None, resume: bool = False, **overrides) -> dict:
    return train(load_ddpm_config(config, **overrides), resume=resume)
