"""CLI for image → prompt: ``interrogate``, ``interrogate-eval`` and ``train-captioner``.

The lead mounts these as top-level commands (``bestshot interrogate ...``); ``train-captioner`` can also
be mounted under the ``train`` group as ``bestshot train captioner``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import typer
from rich.console import Console

from bestshot import jsonio

from ..config import EMBEDDED
from ..errors import BestshotError

app = typer.Typer(
    help="Predict the prompt behind an image, and score predictions like the Kaggle competition.", no_args_is_help=True
)
out_console = Console()
err_console = Console(stderr=True)


@app.command("interrogate")
def interrogate(
    image_or_folder: Path = typer.Argument(..., help="An image, or a folder of images."),
    mode: str = typer.Option("best", "--mode", help="best | classic | fast"),
    clip: str = typer.Option(EMBEDDED, "--clip", help="CLIP for ranking: 'embedded', a local folder or a hub id."),
    caption: str | None = typer.Option(None, "--caption", help="A transformers image-to-text model (e.g. BLIP)."),
    captioner: str | None = typer.Option(
        None,
        "--captioner",
        help="A folder written by train-captioner (printed "
        "beside the prompt; in the world domain its caption is one candidate).",
    ),
    banks: str | None = typer.Option(None, "--banks", help="User term banks: a folder of .txt files or one file."),
    domain: str = typer.Option("auto", "--domain", help="auto (world with the embedded CLIP) | world | art"),
    out: Path | None = typer.Option(None, "--out", help="Write image,prompt,score rows to this CSV."),
    device: str | None = typer.Option(None, "--device"),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="Bank embedding cache (default ~/.cache/bestshot)."),
    sizes: bool = typer.Option(True, "--sizes/--no-sizes", help="World prompts with size words (world domain)."),
    prior_weight: float = typer.Option(
        0.5,
        "--prior-weight",
        help="World domain: weight of the world's prior when "
        "prompts with different object counts compete (1 = as the theory says, "
        "0 = CLIP similarity alone).",
    ),
    spatial: bool = typer.Option(
        True,
        "--spatial/--no-spatial",
        help="World domain: read the relation of two objects "
        "from where CLIP sees each one (patch embeddings), not from the pooled cosine.",
    ),
    regions: bool = typer.Option(
        True,
        "--regions/--no-regions",
        help="World domain: cut each object out of its "
        "plain background and let CLIP read it alone (count and relation from where the "
        "objects are), not the whole scene at once.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Predict the prompt of IMAGE_OR_FOLDER; unreadable files in a folder are reported and skipped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .interrogator import InterrogateConfig, Interrogator, interrogate_paths, list_inputs

    paths = list_inputs(image_or_folder)
    cfg = InterrogateConfig(
        mode=mode,
        clip=clip,
        caption=caption,
        captioner=captioner,
        banks=banks,
        domain=domain,
        device=device,
        cache_dir=cache_dir,
        sizes=sizes,
        prior_weight=prior_weight,
        spatial=spatial,
        regions=regions,
    )
    if out is not None:  # before any model loads
        from ..store import ensure_writable

        ensure_writable(out.parent if str(out.parent) else Path("."), "the prompts CSV in")
    engine = Interrogator(cfg)
    folder = image_or_folder.is_dir()
    if folder and not quiet:
        cols = (TextColumn("interrogating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*cols, console=err_console, transient=False) as bar:
            task = bar.add_task("images", total=len(paths))
            done, skipped = interrogate_paths(engine, paths, batch_size, lambda n: bar.advance(task, n))
    else:
        done, skipped = interrogate_paths(engine, paths, batch_size)
    for p, why in skipped:
        err_console.print(f"[yellow]skipped[/] {p.name}: {why}", highlight=False, soft_wrap=True)
    captioned = bool(engine.captioners)
    if captioned and engine.domain == "world":  # the caption is one candidate of the world search: say what it did
        from .. import world as W

        kept = sum(1 for _, r in done if r.caption and r.prompt == r.caption)
        foreign = sum(1 for _, r in done if r.caption and W.parse_prompt(r.caption) is None)
        err_console.print(
            f"world domain: the caption is one candidate prompt among the world's; CLIP kept it for "
            f"{kept} of {len(done)} image(s)"
            + (
                f"; {foreign} caption(s) are not world prompts and "
                "were not candidates (--domain art starts from the caption instead)"
                if foreign
                else ""
            ),
            highlight=False,
            soft_wrap=True,
        )
    if not done:
        raise BestshotError(
            f"no readable image in {image_or_folder} ({len(skipped)} skipped) — give PNG/JPEG/WebP files"
        )
    if out is not None:
        from ..store import atomic_write_text

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "prompt", "score"] + (["caption"] if captioned else []))
        for p, r in done:
            w.writerow([p.name, r.prompt, f"{r.score:.4f}"] + ([r.caption] if captioned else []))
        atomic_write_text(out, buf.getvalue())
        err_console.print(
            f"wrote {len(done)} prompts to {out}" + (f" ({len(skipped)} files skipped)" if skipped else "")
        )
    elif not folder:
        r = done[0][1]
        out_console.print(
            r.prompt + (f"\t(caption: {r.caption})" if captioned else ""), highlight=False, soft_wrap=True
        )
    else:
        for p, r in done:
            out_console.print(
                f"{p.name}\t{r.prompt}" + (f"\t(caption: {r.caption})" if captioned else ""),
                highlight=False,
                soft_wrap=True,
            )


@app.command("interrogate-eval")
def interrogate_eval(
    predictions: Path = typer.Argument(..., help="CSV with imgId (or image) and prompt columns."),
    truth: Path | None = typer.Argument(
        None, help="CSV with the true prompts, same columns (optional with --submission)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write per-image scores to this CSV."),
    submission: Path | None = typer.Option(
        None,
        "--submission",
        help="Write the Kaggle submission of the predictions: imgId_eId,val rows of their 384-d MiniLM embeddings.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Mean cosine similarity of all-MiniLM-L6-v2 embeddings (the Kaggle image-to-prompts score), and/or the
    competition's submission file of the predictions (--submission)."""
    from .metric import score_predictions, submission_from_predictions, write_rows

    if truth is None and submission is None:
        raise BestshotError("give the truth CSV to score against, or --submission FILE to write the Kaggle submission")
    for p in (predictions, truth):
        if p is not None and not p.is_file():
            raise BestshotError(f"{p} does not exist — give a CSV file")
    if out is not None:  # before the MiniLM loads
        from ..store import ensure_writable

        ensure_writable(out.parent if str(out.parent) else Path("."), "the scores CSV in")
    if submission is not None:
        path, ids, _ = submission_from_predictions(predictions, submission)
        if truth is None:
            if as_json:
                out_console.print_json(jsonio.dumps({"submission": str(path), "images": len(ids)}))
            else:
                out_console.print(f"wrote {path}: {len(ids)} images x 384 rows", highlight=False)
            return
    mean, rows = score_predictions(predictions, truth)
    missing = [r["image"] for r in rows if r["status"] == "missing"]
    extra = [r["image"] for r in rows if r["status"] == "extra"]
    if out is not None:
        write_rows(out, rows)
    summary = {
        "score": round(mean, 6),
        "n": len(rows) - len(extra),
        "missing": missing,
        "extra": extra,
        "per_image": str(out) if out else None,
        "submission": str(submission) if submission else None,
    }
    if as_json:
        out_console.print_json(jsonio.dumps(summary))
        return
    out_console.print(f"mean MiniLM cosine: {mean:.4f} over {summary['n']} images", highlight=False)
    if missing:
        err_console.print(
            f"[yellow]{len(missing)} images have no prediction (scored 0):[/] {', '.join(missing[:10])}"
            + (" ..." if len(missing) > 10 else ""),
            highlight=False,
        )
    if extra:
        err_console.print(f"[yellow]{len(extra)} predictions have no true prompt (ignored)[/]", highlight=False)


@app.command("train-captioner")
def train_captioner_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write the captioner to (checkpointed as it trains)."),
    config: Path | None = typer.Option(None, "--config", help="YAML with CaptionerConfig fields."),
    dataset: str | None = typer.Option(None, "--dataset", help="world | world:1-2 | a caption folder | a CSV."),
    clip: str | None = typer.Option(None, "--clip", help="Frozen CLIP image encoder (default: embedded)."),
    features: str | None = typer.Option(
        None,
        "--features",
        help="What the mapper reads: pooled (the CLIP "
        "embedding, ClipCap) or patches (the vision tokens as the prefix, LLaVA style).",
    ),
    patch_pool: int | None = typer.Option(
        None,
        "--patch-pool",
        min=1,
        help="patches: average the patch grid over N×N cells (fewer prefix tokens, faster).",
    ),
    lm: str | None = typer.Option(None, "--lm", help="Pretrained GPT-2 id/folder (default: a tiny one from scratch)."),
    trainable_lm_layers: int | None = typer.Option(None, "--trainable-lm-layers", min=0),
    steps: int | None = typer.Option(None, "--steps", min=1),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    lr: float | None = typer.Option(None, "--lr"),
    generated_model: str | None = typer.Option(
        None,
        "--generated-model",
        help="World datasets: every other "
        "image is a world item redrawn by this model (e.g. embedded), so the "
        "captioner also learns generated images.",
    ),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Train the CLIP-prefix captioner (frozen CLIP → mapper → GPT-2) with NLL on image-caption pairs."""
    from .captioner import CaptionerConfig, train_captioner

    cfg = CaptionerConfig.from_yaml(config) if config else CaptionerConfig()
    for k, v in dict(
        dataset=dataset,
        clip=clip,
        features=features,
        patch_pool=patch_pool,
        lm=lm,
        trainable_lm_layers=trainable_lm_layers,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        generated_model=generated_model,
        device=device,
    ).items():
        if v is not None:
            setattr(cfg, k, v)
    result = train_captioner(
        cfg, out, on_log=lambda s, loss: err_console.print(f"step {s}/{cfg.steps} loss {loss:.4f}")
    )
    hist = result["history"]
    out_console.print(
        f"captioner saved to {out} ({result['steps']} steps, {result['seconds']} s, "
        f"loss {hist[0][1]:.3f} → {hist[-1][1]:.3f})",
        highlight=False,
    )
