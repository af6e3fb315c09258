"""Seed 002 on real images: Fashion-MNIST, a denoiser trained WITHOUT captions, sampled from text.

Run shortened on 2026-12-05 (time budgets 20/30/30 min; results in bench/RESULTS.md); the full recipe takes
about 2 CPU-hours on 2 cores and has not been run yet.
``--quick`` runs every stage on a few hundred images in about a minute, to check the recipe works.

Stages (each skipped when its output exists, so the script resumes):

1. oracle: a small CNN trained apart from everything else on the training split; its test accuracy is
   reported (it judges the samples, and its penultimate layer is the feature space of the Fréchet distance);
2. CLIP on images with label captions (configs/fashion/clip.yaml);
3. the CLIP image embeddings of the training images (``bestshot train embed``, no captions used);
4. the denoiser on those image embeddings, ``cond: image_embed`` (configs/fashion/ddpm_image_embed.yaml);
5. the class-conditional baseline, the same denoiser on the captions' text embeddings (ddpm_text.yaml);
6. judge: ``--per-class`` samples of each model for each prompt "a photo of a {noun}"; the share whose
   oracle class is the prompt's, and the Fréchet distance to the test split in the oracle's feature space;
   the random-label floor is the share of the same samples matching a shuffled label (chance level).

    python bench/fashion_demo.py                       # the full recipe (writes runs/fashion/results.json)
    python bench/fashion_demo.py --quick --runs /tmp/f  # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
NOUNS = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")


class Oracle(torch.nn.Module):
    """A small CNN on 32-px grey images; ``features`` is its 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(64, 128, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(128, 10)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def _grey(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] RGB (B, 3, H, W) → (B, 1, 32, 32)."""
    x = x.mean(1, keepdim=True)
    return x if x.shape[-1] == 32 else F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)


def _split(split: str, n: int | None):
    from bestshot.train.data import FashionMNISTDataset

    ds = FashionMNISTDataset(split=split, size=32)
    n = min(n or len(ds), len(ds))
    x = torch.stack([ds[i][0] for i in range(n)])
    return x, torch.as_tensor(ds.labels[:n])


def train_oracle(path: Path, n_train: int | None, epochs: int, seed: int = 123) -> dict:
    torch.manual_seed(seed)
    x, y = _split("train", n_train)
    xt, yt = _split("test", None if n_train is None else max(500, n_train // 6))
    net = Oracle()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            xb = _grey(x[idx])
            xb = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, xb.flip(-1), xb)
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(_grey(xt)).argmax(1) == yt).float().mean())
    torch.save(net.state_dict(), path)
    return {"oracle_test_accuracy": round(acc, 4), "oracle_train_images": len(x), "oracle_epochs": epochs}


@torch.no_grad()
def judge(
    run_dir: Path, oracle: Oracle, test_feats: np.ndarray, per_class: int, steps: int, guidance: float, seed: int = 0
) -> dict:
    from bestshot.evaluate.metrics import fid
    from bestshot.train.ddpm import pipeline_from_checkpoint

    pipe = pipeline_from_checkpoint(run_dir)[0]
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"a photo of {'an' if n[0] in 'aeiou' else 'a'} {n}" for n in NOUNS]
    gens = [torch.Generator().manual_seed(seed + k) for k in range(per_class * len(prompts))]
    imgs = pipe(
        prompts,
        num_images_per_prompt=per_class,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=gens,
        output_type="np",
    ).images
    x = torch.from_numpy(np.asarray(imgs, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1
    labels = torch.arange(len(prompts)).repeat_interleave(per_class)
    pred = oracle(_grey(x)).argmax(1)
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    feats = oracle.features(_grey(x)).numpy()
    return {
        "class_match": round(float((pred == labels).float().mean()), 4),
        "random_label_floor": round(float((pred == shuffled).float().mean()), 4),
        "frechet_oracle_features": round(fid(test_feats, feats), 4),
        "samples": len(labels),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs/fashion")
    ap.add_argument("--quick", action="store_true", help="a few hundred images and steps: checks the recipe only")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for every stage (0: the configs' own)")
    ap.add_argument("--clip-minutes", type=float, default=None, help="the CLIP's time budget (default: its config's)")
    ap.add_argument(
        "--ddpm-minutes", type=float, default=None, help="each denoiser's time budget (default: its config's)"
    )
    args = ap.parse_args(argv)
    from bestshot.train import clip_train, ddpm
    from bestshot.train.embed import build_cache

    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    q = args.quick
    n_img = 256 if q else 60_000
    t0 = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    res: dict = {
        "quick": q,
        "machine": f"{torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}",
        "argv": list(argv) if argv is not None else __import__("sys").argv[1:],
    }
    stages_file = runs / "stages.json"  # each stage's own report, kept across resumed runs
    stages: dict = json.loads(stages_file.read_text()) if stages_file.exists() else {}

    def stage_done(name: str, report: dict) -> None:
        stages[name] = report
        tmp = stages_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(stages, indent=2, default=str))
        tmp.replace(stages_file)

    oracle_path = runs / "oracle.pt"
    if not oracle_path.exists():
        t = time.time()
        stage_done(
            "oracle",
            {**train_oracle(oracle_path, 512 if q else None, 1 if q else 5), "seconds": round(time.time() - t, 1)},
        )
    oracle = Oracle()
    oracle.load_state_dict(torch.load(oracle_path))
    oracle.eval()

    small = (
        dict(
            vision_hidden=32,
            vision_layers=1,
            text_hidden=32,
            text_layers=1,
            projection_dim=32,
            steps=3,
            batch_size=32,
            max_minutes=0,
        )
        if q
        else {}
    )
    over = {"threads": args.threads} if args.threads else {}
    clip_over = {**over, **({"max_minutes": args.clip_minutes} if args.clip_minutes is not None else {})}
    ddpm_over = {**over, **({"max_minutes": args.ddpm_minutes} if args.ddpm_minutes is not None else {})}
    clip_dir = runs / "clip"
    if not (clip_dir / "config.json").exists():
        t = time.time()
        rep = clip_train.run(str(ROOT / "configs/fashion/clip.yaml"), out_dir=str(clip_dir), **{**clip_over, **small})
        stage_done("clip", {"report": rep, "seconds": round(time.time() - t, 1)})
    cache = runs / "embeds.safetensors"
    if not cache.exists():
        t = time.time()
        build_cache("fashion-mnist", clip_dir, cache, img_size=32, length=n_img)
        stage_done("embed", {"images": n_img, "seconds": round(time.time() - t, 1)})
    dd = (
        dict(
            block_out_channels=(32, 32),
            attention_levels=(False, True),
            steps=3,
            batch_size=16,
            ckpt_every=3,
            max_minutes=0,
        )
        if q
        else {}
    )
    for name, cfg_file, extra in (
        ("image_embed", "ddpm_image_embed.yaml", {"embed_cache": str(cache)}),
        ("text_baseline", "ddpm_text.yaml", {}),
    ):
        out = runs / f"ddpm_{name}"
        cfg = ddpm.load_config(
            ddpm.DDPMConfig,
            str(ROOT / "configs/fashion" / cfg_file),
            clip=str(clip_dir),
            out_dir=str(out),
            dataset_length=n_img,
            **extra,
            **{**ddpm_over, **dd},
        )
        if not (out / "summary.json").exists():
            t = time.time()
            rep = ddpm.train(cfg, resume=(out / ddpm.CKPT_NAME).exists())
            stage_done(f"train_{name}", {"report": rep, "seconds": round(time.time() - t, 1)})
    xt, _ = _split("test", 500 if q else None)
    with torch.no_grad():
        test_feats = oracle.features(_grey(xt)).numpy()
    per_class = 4 if q else args.per_class
    for name in ("image_embed", "text_baseline"):
        res[name] = judge(runs / f"ddpm_{name}", oracle, test_feats, per_class, 2 if q else args.steps, args.guidance)
    res["stages"] = stages
    res["seconds"] = round(time.time() - t0, 1)
    (runs / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
