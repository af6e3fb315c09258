"""``bestshot taste collect | train``: preference rows from curation, and the head that learns them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer

from ..errors import BestshotError

app = typer.Typer(
    help="Learn what you keep: collect curation verdicts, train a taste head (--scorer clip+taste:0.5).",
    no_args_is_help=True,
)

WORKFLOW_DIR = typer.Option(
    Path("."), "--workflow-dir", "-w", help="Curation folder (with config.yaml, or its outputs/ folder inside)."
)
OUTPUTS = typer.Option(None, "--outputs", help="The outputs folder itself (overrides --workflow-dir).")


def outputs_of(workflow_dir: Path, outputs: Path | None) -> Path:
    """The outputs folder: ``--outputs``, else the one ``WORKFLOW_DIR/config.yaml`` names, else
    ``WORKFLOW_DIR/outputs``."""
    if outputs is not None:
        return outputs
    cfg_file = workflow_dir / "config.yaml"
    if cfg_file.is_file():
        from .config import load_config

        cfg = load_config(cfg_file)
        return cfg.path(cfg.paths.outputs)
    if (workflow_dir / "stage1").is_dir() and (workflow_dir / "metadata").is_dir():
        return workflow_dir
    return workflow_dir / "outputs"


@app.command("collect")
def collect(
    workflow_dir: Path = WORKFLOW_DIR,
    outputs: Path | None = OUTPUTS,
    embed: bool = typer.Option(
        True,
        "--embed/--no-embed",
        help="Embed surviving stage-1 images not embedded yet (so later deletions can train).",
    ),
    scorer: str = typer.Option("embedded", "--scorer", help="Embedder of the head (a CLIP scorer spec)."),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Record stage-1 survivors as keep and deleted stage-1 images (also those the gallery moved to trash/) as
    delete (idempotent)."""
    from ..scoring.taste import EmbeddingCache, embedder_for, read_preferences, taste_dir
    from .preferences import collect_stage1, image_location

    out = outputs_of(workflow_dir, outputs)
    added = collect_stage1(out)
    embedded = 0
    if embed:
        # every image with a row whose PNG still exists: in stage1/, or in the gallery's trash/
        images = sorted({str(r["image"]) for r in read_preferences(out) if r.get("image")})
        cache = EmbeddingCache(out, scorer)
        locate = lambda p: image_location(out, p)  # noqa: E731
        if cache.missing(images, locate):
            embedded = cache.add_missing(images, embedder_for(scorer, device).embed_images, locate=locate)
    counts = {v: sum(r["verdict"] == v for r in added) for v in ("keep", "delete", "star")}
    typer.echo(
        json.dumps(
            {
                "outputs": str(out),
                "added": counts,
                "embedded": embedded,
                "preferences": str(taste_dir(out) / "preferences.jsonl"),
            },
            indent=2,
        )
    )


@app.command("train")
def train(
    workflow_dir: Path = WORKFLOW_DIR,
    outputs: Path | None = OUTPUTS,
    kind: str = typer.Option(
        "logistic",
        "--kind",
        help="logistic (every row) or bt (Bradley–Terry on kept-vs-deleted pairs of the same prompt).",
    ),
    scorer: str = typer.Option("embedded", "--scorer", help="Embedder the head reads (as given to collect)."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds (split by prompt; <2: none)."),
    l2: float = typer.Option(1e-3, "--l2", help="L2 penalty."),
    fresh: bool = typer.Option(False, "--fresh", help="Start from zero instead of the saved head."),
    balanced: bool = typer.Option(
        False,
        "--balanced/--no-balanced",
        help="Weigh kept and deleted rows equally in total (a curation that deletes "
        "most images otherwise learns mostly 'delete').",
    ),
    out_file: Path | None = typer.Option(None, "--out", help="Head file (default OUTPUTS/taste/head.json)."),
) -> None:
    """Train (or retrain, warm-started) the taste head; prints its row count and validation accuracy."""
    from ..scoring.taste import HEAD, TasteHead, dataset, taste_dir, train_head

    if l2 < 0:
        raise BestshotError(f"--l2 must be >= 0 (got {l2})")
    out = outputs_of(workflow_dir, outputs)
    path = out_file or taste_dir(out) / HEAD
    if path.exists() and not path.is_file():
        raise BestshotError(f"{path} is a folder, not a head file — move it away or give --out FILE")
    previous = None
    if path.is_file():
        try:
            previous = TasteHead.load(path)
        except BestshotError as e:
            warnings.warn(f"the saved head is not used: {e}")
    warm = None if fresh else previous
    ds = dataset(out, scorer)
    _check_dim(ds.x.shape[1], scorer, out)
    head = train_head(ds, kind=kind, embedder=scorer, folds=folds, l2=l2, warm=warm, balanced=balanced)
    kept = _keep_previous(path, previous, head)
    head.save(path)  # written beside the old head, checked, then renamed over it
    if kept is not None:
        typer.echo(f"the previous head is kept as {kept}", err=True)
    typer.echo(json.dumps({"head": str(path), "kind": head.kind, **head.info}, indent=2))
    typer.echo(f"use it: --scorer clip+taste@{path}:0.5", err=True)


def _keep_previous(path: Path, previous, head) -> Path | None:
    """Copy a valid head about to be replaced to ``<name>.prev.json`` (atomically), so a retrain never loses a
    good head; warn when the new one validates worse. ``previous`` is the loaded old head (None: none, or
    invalid — nothing worth keeping)."""
    from ..store import atomic_write_bytes, disk_error

    if previous is None or not path.is_file():
        return None
    prev = path.with_name(path.stem + ".prev" + path.suffix)
    try:
        atomic_write_bytes(prev, path.read_bytes())
    except OSError as e:
        raise disk_error(e, f"the copy of the previous taste head {str(prev)!r}") from None
    old, new = previous.info.get("cv_accuracy"), head.info.get("cv_accuracy")
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and new < old:
        warnings.warn(
            f"the new head validates at {new:.3f}, the previous one at {old:.3f} (on the rows it had) — "
            f"to go back: cp {prev} {path}"
        )
    return prev


def _check_dim(dim: int, scorer: str, out: Path) -> None:
    """The cached vectors must have the embedder's dimension, or the head could never score an image."""
    from ..scoring.taste import embedder_for

    if dim == 0:
        return  # no rows: train_head says what is missing
    try:
        model = getattr(embedder_for(scorer), "model", None)
    except BestshotError:
        return  # the embedder is not here: scoring will say so
    want = getattr(getattr(model, "config", None), "projection_dim", None)
    if isinstance(want, int) and want != dim:
        raise BestshotError(
            f"the embedding cache in {out / 'taste'} holds {dim}-d vectors but {scorer!r} embeds "
            f"images in {want}-d — give the --scorer the cache was made with, or delete the cache "
            "and run `bestshot taste collect` again"
        )
