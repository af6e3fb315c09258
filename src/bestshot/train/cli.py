"""``bestshot train ...``: clip, embed, ddpm, sample, export.

Every command turns bad input into a BestshotError (one line, with the fix); the top-level CLI prints it.
Run standalone with ``python -m bestshot.train.cli``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bestshot import jsonio
from bestshot.errors import BestshotError

app = typer.Typer(
    help="Train bestshot's own models: a small CLIP and a CLIP-conditioned diffusion UNet.", no_args_is_help=True
)


def _print(obj) -> None:
    typer.echo(jsonio.dumps(obj, indent=2) if isinstance(obj, dict) else str(obj))


@app.command()
def clip(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (see configs/embedded/clip.yaml)"),
    out_dir: str | None = typer.Option(None, help="output folder (overrides the config)"),
    steps: int | None = typer.Option(None, help="training steps (overrides the config)"),
) -> None:
    """Train a small CLIP contrastively (hard-negative captions on the world); prints held-out retrieval."""
    from bestshot.train.clip_train import run

    _print(run(str(config) if config else None, out_dir=out_dir, steps=steps))


@app.command()
def embed(
    dataset: str = typer.Option("world", help="dataset spec"),
    clip_dir: Path = typer.Option(..., "--clip", help="CLIP folder"),
    out: Path = typer.Option(..., help="cache file (.safetensors)"),
    img_size: int = typer.Option(32),
    length: int = typer.Option(10_000),
    seed: int = typer.Option(0),
    text: bool = typer.Option(False, help="also cache text embeddings of the captions (every image then needs one)"),
    class_caption: str = typer.Option(
        "",
        "--class-caption",
        help="caption images in class folders (root/<class>/...) without a .txt "
        "from their folder, e.g. 'a photo of a {class}'",
    ),
) -> None:
    """Precompute CLIP image embeddings of a dataset into a cache reused across epochs.

    The dataset needs no captions: a folder of images (flat or class folders, e.g. Tiny ImageNet's
    train/<wnid>/images/*.JPEG), a CSV manifest (image[,caption]), world or fashion-mnist. Any CLIP folder
    works: images are resized to its own resolution and normalised as its processor config says."""
    from bestshot.train.common import check_clip_spec
    from bestshot.train.embed import build_cache

    check_clip_spec(clip_dir)  # before the dataset is read
    _print(build_cache(dataset, clip_dir, out, img_size, length, seed, text=text, class_caption=class_caption))


@app.command()
def ddpm(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (see configs/embedded/ddpm.yaml)"),
    resume: bool = typer.Option(False, "--resume", help="continue from out_dir/latest.pt"),
    out_dir: str | None = typer.Option(None, help="output folder (overrides the config)"),
    steps: int | None = typer.Option(None, help="total steps (overrides the config)"),
    max_minutes: float | None = typer.Option(None, help="stop with a checkpoint after this wall time"),
) -> None:
    """Train the denoiser (DDPM objective, CFG context dropout, EMA, checkpoints, resume).

    Data parallel on N processes: `accelerate launch --multi_gpu --num_processes N -m bestshot.train.cli ddpm ...`
    on N GPUs, or `torchrun --nproc_per_node N -m bestshot.train.cli ddpm ...` (GPUs or CPU processes; accelerate
    launch needs MPI for several CPU processes); the same config then trains on N times the items per step."""
    import os

    from bestshot.train.ddpm import run

    res = run(str(config) if config else None, resume=resume, out_dir=out_dir, steps=steps, max_minutes=max_minutes)
    if int(os.environ.get("RANK", "0")) == 0:
        _print(res)


@app.command()
def sample(
    checkpoint: Path = typer.Option(..., help="run folder, .pt checkpoint or exported pipeline folder"),
    prompts: list[str] = typer.Option(..., help="one or more prompts (repeat --prompts or list them)"),
    out: Path = typer.Option(Path("grid.png"), help="grid PNG"),
    n: int = typer.Option(4, help="images per prompt"),
    scheduler: str = typer.Option("ddim", help="ddim or ddpm"),
    steps: int | None = typer.Option(None),
    guidance: float | None = typer.Option(None, help="guidance weight w"),
    seed: int = typer.Option(0),
    gif: Path | None = typer.Option(None, help="animated GIF of the denoising"),
    gif_mode: str = typer.Option("x0", help="x0 (predicted image) or xt (noisy sample)"),
    similarity: Path | None = typer.Option(
        None, help="PNG of the CLIP similarity of every prompt with every sample (text↔image matrix)"
    ),
) -> None:
    """Sample a grid (rows = prompts) and optionally a GIF of the denoising process."""
    from bestshot.train.sample import sample as run

    _print(run(checkpoint, prompts, out, n, scheduler, steps, guidance, seed, gif, gif_mode, similarity))


@app.command()
def export(
    checkpoint: Path = typer.Option(..., help="run folder, .pt checkpoint or exported pipeline folder"),
    out: Path = typer.Option(..., help="pipeline folder to write"),
    clip_dir: str | None = typer.Option(None, "--clip", help="CLIP folder (default: the one in the config)"),
    fp16: bool = typer.Option(True, help="store weights in float16 (half the size)"),
    steps: int | None = typer.Option(None, help="recommended inference steps"),
    guidance: float | None = typer.Option(None, help="recommended guidance weight"),
    clip_min: float | None = typer.Option(None, help="quality gate for this model's own CLIP (cosine)"),
    n_images: int | None = typer.Option(None, help="default number of candidates"),
    spatial_guidance: float | None = typer.Option(
        None,
        "--spatial-guidance",
        min=0.0,
        help="steer relation prompts with the CLIP's patch embeddings (0 = off; default: keep the folder's)",
    ),
    spatial_guidance_end: float | None = typer.Option(
        None,
        "--spatial-guidance-end",
        help="fraction of the steps that are steered, in (0, 1] (default: keep the folder's)",
    ),
    spatial_guidance_every: int | None = typer.Option(
        None,
        "--spatial-guidance-every",
        min=1,
        help="steer every k-th of those steps (1 = each; default: keep the folder's)",
    ),
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        help="sampler saved with the folder and used by default, e.g. ddim, dpmpp_2m, "
        "unipc (default: keep the folder's)",
    ),
) -> None:
    """Write a BestshotWorldPipeline folder (EMA weights) + bestshot_defaults.json."""
    from bestshot.train.ddpm import export as run

    d = {"num_inference_steps": steps, "guidance_scale": guidance, "clip_min": clip_min, "n_images": n_images}
    d = {k: v for k, v in d.items() if v is not None}
    _print(
        run(
            checkpoint,
            out,
            clip_dir,
            fp16=fp16,
            defaults=d,
            spatial_guidance_scale=spatial_guidance,
            spatial_guidance_end=spatial_guidance_end,
            spatial_guidance_every=spatial_guidance_every,
            scheduler=scheduler,
        )
    )


def main() -> None:
    try:
        app()
    except BestshotError as e:
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
