"""Several CLIP image towers trained side by side on one data stream, against one frozen text tower.

Why: the embedded CLIP's 4-layer, 32 px image tower reads an object's shape in a two-object scene right only
~65 % of the time (bench/clip_binding.py), and fine-tuning it did not move that. Whether a larger tower
binds better — a finer patch grid, more width, more depth — is a question for a GPU, whose time is scarce.
So every tower here sees the same batches (rendered once, tokenized once, degraded once) and the same text
features (the text tower is frozen and identical in all of them, so it runs once per step); each one alone is
what ``bestshot train clip`` trains from the same config with ``init_text_from`` and that tower's sizes.

    python bench/clip_towers.py --config configs/embedded/clip_towers.yaml \\
        --tower p4w128l4:4:128:4:4 --tower p2w192l6:2:192:6:6 --export $OUT

Each tower is saved as a CLIP folder under the config's out_dir; ``--export DIR`` also writes each image side
alone (fp16, ``NAME.vision.safetensors``, with its config and metrics in the metadata: small enough to copy
back from a GPU machine), and ``assemble`` turns such a file back into a CLIP folder beside its text tower:

    python bench/clip_towers.py assemble out/p2w192l6.vision.safetensors --out runs/towers/p2w192l6

``export`` writes such a file for a folder that ``bestshot train clip`` trained on (one tower at a time):

    python bench/clip_towers.py export runs/towers/cont --config configs/embedded/clip_tower_cont.yaml \
        --out cont.vision.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch


def parse_tower(spec: str) -> tuple[str, dict]:
    try:
        name, patch, hidden, layers, heads = spec.split(":")
        return name, dict(
            patch_size=int(patch), vision_hidden=int(hidden), vision_layers=int(layers), vision_heads=int(heads)
        )
    except ValueError:
        raise SystemExit(f"--tower {spec!r}: write NAME:PATCH:HIDDEN:LAYERS:HEADS, e.g. p2w192l6:2:192:6:6") from None


def export_vision(model, cfg, metrics: dict, path: Path) -> None:
    """The image side alone (vision tower, visual projection, logit scale) in fp16, with what rebuilds it."""
    from safetensors.torch import save

    from bestshot.store import atomic_write_bytes

    sd = {
        k: v.detach().to("cpu", torch.float16).contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(("vision_model.", "visual_projection.")) or k == "logit_scale"
    }
    meta = {"bestshot_clip_config": json.dumps(dataclasses.asdict(cfg)), "metrics": json.dumps(metrics)}
    atomic_write_bytes(path, save(sd, metadata=meta))


def assemble(vision_file: str, out: str, text_from: str | None = None) -> Path:
    """A CLIP folder from an exported image side and the text tower of ``text_from`` (default: the config's
    ``init_text_from``)."""
    from safetensors import safe_open

    from bestshot.store import atomic_write_text
    from bestshot.train.clip_train import ClipTrainConfig, clip_with_text_from, save_clip_folder

    with safe_open(vision_file, "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k).float() for k in f.keys()}
    cfg = ClipTrainConfig(**json.loads(meta["bestshot_clip_config"]))
    model, tok = clip_with_text_from(cfg, text_from or cfg.init_text_from)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(k.startswith(("vision_model.", "visual_projection.")) for k in missing):
        raise SystemExit(
            f"{vision_file} does not fit its own config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    save_clip_folder(model, tok, cfg, Path(out))
    atomic_write_text(Path(out) / "metrics.json", meta.get("metrics", "{}"))
    return Path(out)


def train(
    cfg_path: str, towers: list[tuple[str, dict]], export: str | None, snapshot_s: float, overrides: dict
) -> dict:
    from bestshot.models.loader import resolve_device
    from bestshot.store import atomic_write_text
    from bestshot.train.clip_train import (
        ClipTrainConfig,
        clip_with_text_from,
        contrastive_loss,
        degrade,
        evaluate,
        image_features,
        learning_rate,
        make_optimizer,
        negatives_per_image,
        save_clip_folder,
        text_features,
        to_clip_pixels,
        training_loader,
    )
    from bestshot.train.common import load_config

    base = load_config(ClipTrainConfig, cfg_path, **overrides)
    if not (base.init_text_from and base.freeze_text):
        raise SystemExit(
            "the towers share one frozen text tower: the config needs init_text_from and freeze_text: true"
        )
    if base.threads:
        torch.set_num_threads(base.threads)
    device = resolve_device()
    runs = []
    for name, sizes in towers:
        torch.manual_seed(base.seed)
        cfg = dataclasses.replace(base, out_dir=str(Path(base.out_dir) / name), **sizes)
        model, tok = clip_with_text_from(cfg, cfg.init_text_from)
        model.to(device).train()
        opt = make_optimizer(model, cfg)  # cfg.freeze_text is checked above: the text side is frozen here
        n_vis = sum(p.numel() for p in model.vision_model.parameters())
        print(
            f"{name}: {n_vis / 1e6:.2f} M vision parameters, {(cfg.img_size // cfg.patch_size) ** 2} patches",
            flush=True,
        )
        runs.append(dict(name=name, cfg=cfg, model=model, opt=opt, losses=[]))
    text = runs[0]["model"]  # the frozen text tower all of them share
    k = negatives_per_image(base)
    Path(base.out_dir).mkdir(parents=True, exist_ok=True)
    loader = training_loader(base, tok)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=base.amp and device.type == "cuda")
    out_dir = Path(export) if export else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    t0 = last_snap = time.time()
    step = 0
    for imgs, _caps, negs, enc in loader:
        lr = learning_rate(base, step, time.time() - t0)
        if base.blur_max > 0 or base.noise_max > 0:
            imgs = degrade(imgs, base.blur_max, base.noise_max, base.degrade_prob)
        pixels = to_clip_pixels(imgs.to(device, non_blocking=True))
        enc = enc.to(device)
        with torch.no_grad(), amp:
            txt = text_features(text, enc.input_ids, enc.attention_mask)
        for r in runs:
            for g in r["opt"].param_groups:
                g["lr"] = lr
            with amp:
                img = image_features(r["model"], pixels)
            loss = contrastive_loss(img, txt, r["model"].logit_scale, k, bool(negs))[0]
            r["opt"].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(r["model"].parameters(), 1.0)
            r["opt"].step()
            r["losses"].append(loss.detach())
        step += 1
        elapsed = time.time() - t0
        if step % base.log_every == 0:
            cur = " ".join(f"{r['name']} {torch.stack(r['losses'][-base.log_every :]).mean().item():.3f}" for r in runs)
            print(
                f"step {step} {elapsed:.0f}s {step * base.batch_size / elapsed:.0f} img/s lr {lr:.2e} | {cur}",
                flush=True,
            )
        if out_dir and snapshot_s and time.time() - last_snap > snapshot_s:
            for r in runs:
                export_vision(
                    r["model"], r["cfg"], {"steps": step, "snapshot": True}, out_dir / f"{r['name']}.vision.safetensors"
                )
            last_snap = time.time()
        if step >= base.steps or (base.max_minutes and elapsed > 60 * base.max_minutes):
            break
    elapsed = time.time() - t0
    report = {}
    for r in runs:
        model, cfg = r["model"], r["cfg"]
        metrics = evaluate(model, tok, cfg)
        losses = [v.item() for v in r["losses"][-20:]]
        metrics.update(
            steps=step,
            seconds=round(elapsed, 1),
            final_loss=sum(losses) / max(1, len(losses)),
            device=device.type,
            images_per_s=round(step * base.batch_size / elapsed, 1),
        )
        print(r["name"], json.dumps(metrics), flush=True)
        if out_dir:
            export_vision(model, cfg, metrics, out_dir / f"{r['name']}.vision.safetensors")
        save_clip_folder(model.cpu(), tok, cfg, Path(cfg.out_dir))
        atomic_write_text(Path(cfg.out_dir) / "metrics.json", json.dumps(metrics, indent=2))
        report[r["name"]] = metrics
    if out_dir:
        atomic_write_text(out_dir / "towers_metrics.json", json.dumps(report, indent=2))
    return report


def main() -> None:
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "export":
        ap = argparse.ArgumentParser(prog="clip_towers.py export")
        ap.add_argument("folder", help="a CLIP folder written by `bestshot train clip` (with metrics.json)")
        ap.add_argument(
            "--config", required=True, help="the config that trained it (its vision sizes rebuild the tower)"
        )
        ap.add_argument("--out", required=True, help="the .vision.safetensors file to write")
        a = ap.parse_args(sys.argv[2:])
        from transformers import CLIPModel

        from bestshot.train.clip_train import ClipTrainConfig
        from bestshot.train.common import load_config

        metrics = Path(a.folder) / "metrics.json"
        export_vision(
            CLIPModel.from_pretrained(a.folder),
            load_config(ClipTrainConfig, a.config),
            json.loads(metrics.read_text()) if metrics.exists() else {},
            Path(a.out),
        )
        print(a.out)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "assemble":
        ap = argparse.ArgumentParser(prog="clip_towers.py assemble")
        ap.add_argument("vision_file")
        ap.add_argument("--out", required=True)
        ap.add_argument("--text-from", default=None, help="CLIP folder with the text tower (default: the config's)")
        a = ap.parse_args(sys.argv[2:])
        print(assemble(a.vision_file, a.out, a.text_from))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="a ClipTrainConfig YAML with init_text_from and freeze_text")
    ap.add_argument("--tower", action="append", required=True, help="NAME:PATCH:HIDDEN:LAYERS:HEADS (repeat)")
    ap.add_argument("--export", default=None, help="also write each image side (fp16) and the metrics here")
    ap.add_argument(
        "--snapshot-minutes", type=float, default=0.0, help="re-export every so many minutes while training"
    )
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--out-dir", default=None)
    a = ap.parse_args()
    over = {
        k: v
        for k, v in dict(
            steps=a.steps,
            max_minutes=a.max_minutes,
            num_workers=a.num_workers,
            batch_size=a.batch_size,
            out_dir=a.out_dir,
        ).items()
        if v is not None
    }
    train(a.config, [parse_tower(t) for t in a.tower], a.export, 60 * a.snapshot_minutes, over)


if __name__ == "__main__":
    main()
