"""`bestshot eval ...` sub-commands."""

from __future__ import annotations

import typer
from rich.console import Console

from bestshot import jsonio
from bestshot.scale.flags import RayFlagCommand

from ..errors import BestshotError
from ..scale.cli_options import CPUS_PER_WORKER, GPUS_PER_WORKER, RAY, RAY_BATCH, RAY_WORKERS

app = typer.Typer(no_args_is_help=True, help="Evaluate models: the embedded world, GenEval, COCO-style metrics.")
out = Console()


def _numbers(text: str, what: str, kind: type = int) -> tuple:
    """``"1,4,8"`` → ``(1, 4, 8)`` (``kind`` int or float); a bad list is one clear error naming the flag."""
    example, words = ("1,4,8", "whole numbers") if kind is int else ("3,5,7.5", "numbers")
    try:
        vals = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BestshotError(f"{what} must be comma-separated {words}, e.g. {example} (got {text!r})") from None
    if not vals:
        raise BestshotError(f"{what} is empty — e.g. {example}")
    return vals


@app.command("world")
def world(
    model: str = typer.Option("embedded", "--model", "-m", help="Model to evaluate (default: the embedded one)."),
    n_prompts: int = typer.Option(200, "--prompts", help="Held-out prompts per group (>= 200 for the report)."),
    groups: str = typer.Option("1,2", "--objects", help="Object counts per prompt group, e.g. 1,2."),
    ns: str | None = typer.Option(None, "--n", help="Candidate counts to compare (default 1,4,8)."),
    steps: int | None = typer.Option(None, "--steps"),
    guidance: float | None = typer.Option(None, "--guidance"),
    scorer: str | None = typer.Option(None, "--scorer"),
    seed: int = typer.Option(12345, "--prompt-seed", help="Seed of the held-out prompt set."),
    out_dir: str | None = typer.Option("eval_world", "--out", help="Folder for world_eval.json and .md."),
    cache: str | None = typer.Option(
        None,
        "--cache",
        help="Folder that keeps the candidates and oracle verdicts: "
        "a rerun with the same model only scores them again (compare --scorer).",
    ),
    variant: list[str] | None = typer.Option(
        None,
        "--variant",
        help="NAME=SETTINGS (repeatable): run each prompt as `bestshot generate` does with the model's defaults plus "
        "these ImgCfg settings, e.g. plain= or best16=n_images=16; the oracle judges the kept image.",
    ),
    time_limit: float | None = typer.Option(
        None,
        "--time-limit",
        help="With --variant: stop after this many seconds (a rerun resumes; 0: only report the runs done).",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Full-match rate (oracle) for N=1 and best-of-N ranked by CLIP, per attribute; with --variant, per variant
    of the user's own best-of-N run."""
    if n_prompts < 1:
        raise BestshotError("--prompts must be >= 1")
    if variant:
        return _world_variants(
            model,
            n_prompts,
            groups,
            steps,
            guidance,
            scorer,
            seed,
            out_dir,
            variant,
            time_limit,
            as_json,
            bool(ns or cache),
        )
    from .world_eval import WorldEvalConfig, dumps, evaluate_world, to_markdown

    ns = ns or "1,4,8"
    cfg = WorldEvalConfig(
        model=model,
        n_prompts=n_prompts,
        groups=_numbers(groups, "--objects"),
        ns=_numbers(ns, "--n"),
        steps=steps,
        guidance=guidance,
        scorer=scorer,
        seed=seed,
        out=out_dir,
        cache=cache,
    )
    res = evaluate_world(cfg, progress=not as_json)
    if as_json:
        print(dumps(res))
    else:
        out.print(to_markdown(res))
        if out_dir:
            out.print(f"written: {out_dir}/world_eval.json, {out_dir}/world_eval.md")


def _world_variants(
    model, n_prompts, groups, steps, guidance, scorer, seed, out_dir, variants, time_limit, as_json, image_set_flags
) -> None:
    from .world_variants import VariantEvalConfig, evaluate_variants
    from .world_variants_report import dumps, to_markdown

    if image_set_flags:
        raise BestshotError("--n and --cache compare picks from one image set; with --variant set n_images per variant")
    if not out_dir:
        raise BestshotError("--variant keeps each run's result in --out FOLDER (to resume): give one")
    base = {k: v for k, v in dict(steps_base=steps, guidance=guidance, scorer=scorer).items() if v is not None}
    cfg = VariantEvalConfig(
        variants=tuple(variants),
        model=model,
        n_prompts=n_prompts,
        groups=_numbers(groups, "--objects"),
        seed=seed,
        base=base,
        out=out_dir,
        time_limit_s=time_limit,
    )
    res = evaluate_variants(cfg, progress=not as_json)
    if as_json:
        print(dumps(res))
    else:
        print(to_markdown(res))  # plain print: the table's rows stay whole, to paste
        print(f"written: {', '.join(v for v in res['files'].values() if v)}")
        if res.get("plot_note"):
            print(res["plot_note"])


@app.command("geneval")
def geneval(
    methods: str = typer.Option(
        "plain,best_of_n",
        "--methods",
        help="Generation methods, one column each: plain, best_of_n, regions (best_of_n with --regions auto), "
        "search (best_of_n with --search).",
    ),
    variant: list[str] | None = typer.Option(
        None,
        "--variant",
        help="NAME=SETTINGS (repeatable): one more column, best_of_n's settings plus these ImgCfg settings, "
        "e.g. both=regions=auto,search=true or best16=n_images=16.",
    ),
    n: int = typer.Option(4, "--n", help="Candidates of best_of_n (and of every column built on it)."),
    samples: int = typer.Option(1, "--samples", help="Images per prompt and method (GenEval's paper: 4)."),
    prompts: str | None = typer.Option(None, "--prompts", help="GenEval metadata .jsonl (default: the shipped set)."),
    tags: str | None = typer.Option(None, "--tags", help="Only these categories, e.g. position,counting."),
    limit: int | None = typer.Option(None, "--limit", help="At most this many prompts per category."),
    model: str = typer.Option("embedded", "--model", "-m"),
    steps: int | None = typer.Option(None, "--steps"),
    guidance: float | None = typer.Option(None, "--guidance"),
    scorer: str | None = typer.Option(None, "--scorer", help="Scorer ranking best_of_n (default: the model's)."),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Every column's sampler (default: the model's; search needs e.g. euler or ddim)."
    ),
    seed: int = typer.Option(0, "--seed"),
    detector: str = typer.Option(
        "google/owlv2-base-patch16-ensemble", "--detector", help="OWLv2 / OWL-ViT hub id or local folder."
    ),
    threshold: float = typer.Option(0.15, "--threshold", help="Detection confidence threshold."),
    counting_threshold: float = typer.Option(0.3, "--counting-threshold", help="Threshold of the counting prompts."),
    device: str | None = typer.Option(None, "--device"),
    out_dir: str | None = typer.Option("eval_geneval", "--out", help="Folder for geneval.json, geneval.csv, images."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """GenEval: object, count, colour and position correctness per category, one column per method or variant."""
    from .geneval import GenevalRules
    from .geneval_run import GenevalConfig, evaluate_geneval, rich_table

    cfg = GenevalConfig(
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        n=n,
        samples=samples,
        prompts=prompts,
        tags=tuple(t.strip() for t in (tags or "").split(",") if t.strip()),
        limit=limit,
        model=model,
        steps=steps,
        guidance=guidance,
        scorer=scorer,
        scheduler=scheduler,
        seed=seed,
        device=device,
        detector=detector,
        rules=GenevalRules(threshold=threshold, counting_threshold=counting_threshold),
        out=out_dir,
        variants=tuple(variant or ()),
    )
    try:
        res = evaluate_geneval(cfg, progress=not as_json)
    except KeyboardInterrupt:
        raise BestshotError(f"interrupted — the finished part is in {out_dir}/geneval.json") from None
    if as_json:
        print(jsonio.dumps(res["table"], indent=2))
    else:
        out.print(rich_table(res))
        if out_dir:
            out.print(f"written: {out_dir}/geneval.json, {out_dir}/geneval.csv")


def _size(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    from ..config import parse_size

    return parse_size(text)


@app.command("manifest")
def manifest(
    annotations: str | None = typer.Option(None, "--annotations", help="COCO captions JSON (captions_train2017.json)."),
    images_root: str | None = typer.Option(None, "--images-root", help="Folder holding the COCO images."),
    folder: str | None = typer.Option(None, "--folder", help="Instead of COCO: images with NAME.txt captions beside."),
    out_csv: str = typer.Option(..., "--out", help="Manifest CSV to write (image_path, caption, image_id)."),
    k: int | None = typer.Option(None, "--k", help="How many images (COCO default 1000; folder default all)."),
    min_len: int = typer.Option(5, "--min-len", help="Drop captions with fewer words."),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """Build a caption manifest from COCO captions or from a folder of captioned images."""
    from .manifest import build_coco_manifest, build_folder_manifest, read_manifest

    if (annotations is None) == (folder is None):
        raise BestshotError("give exactly one of --annotations FILE (with --images-root DIR) or --folder DIR")
    if annotations is not None:
        if images_root is None:
            raise BestshotError("--annotations needs --images-root DIR, the folder of the COCO images")
        path = build_coco_manifest(
            annotations, images_root, out_csv, k=1000 if k is None else k, min_len=min_len, seed=seed
        )
    else:
        path = build_folder_manifest(folder, out_csv, k=k, min_len=min_len, seed=seed)
    n = len(read_manifest(path, check_images=False))
    out.print(f"written: {path} ({n} rows)")


@app.command("generate", cls=RayFlagCommand)
def generate_cmd(
    manifest_csv: str = typer.Argument(..., metavar="MANIFEST", help="Manifest CSV (from `bestshot eval manifest`)."),
    out_dir: str = typer.Option(..., "--out", help="Folder for {row_id:06d}.png + .json; rerun to resume."),
    steps: int | None = typer.Option(None, "--steps", help="Denoising steps (default: the model's)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
    num: int | None = typer.Option(None, "--num", help="Only the first NUM usable rows."),
    seed: int = typer.Option(42, "--seed", help="Row i uses seeds seed + i*best_of, ..."),
    model: str = typer.Option("embedded", "--model", "-m"),
    best_of: int = typer.Option(1, "--best-of", help="Candidates per row; the scorer keeps the best."),
    size: str | None = typer.Option(None, "--size", help="WIDTHxHEIGHT (default: the model's)."),
    scorer: str | None = typer.Option(None, "--scorer", help="Scorer for best-of ranking (default: the model's)."),
    device: str | None = typer.Option(None, "--device"),
    ray: str | None = RAY,
    ray_workers: int | None = RAY_WORKERS,
    gpus_per_worker: float | None = GPUS_PER_WORKER,
    cpus_per_worker: float = CPUS_PER_WORKER,
    ray_batch_size: int = RAY_BATCH,
) -> None:
    """Generate one image per manifest row (resumable: rows whose image exists and verifies are skipped).

    With --ray the rows are spread over Ray workers (same seeds, same images and JSON); --out may then
    also be a URI such as s3://bucket/folder."""
    from ..scale.cli_options import ray_cfg
    from .batch import BatchSettings, generate_rows

    job = ray_cfg(ray, ray_workers, gpus_per_worker, cpus_per_worker, ray_batch_size)
    w, h = _size(size)
    s = BatchSettings(
        model=model,
        steps=steps,
        guidance=guidance,
        seed=seed,
        best_of=best_of,
        width=w,
        height=h,
        scorer=scorer,
        device=device,
    )
    res = generate_rows(manifest_csv, out_dir, s, num=num, ray=job)
    report = res.pop("_report", None)
    if report is not None:
        from ..scale.batch import summary_table

        out.print(summary_table(report))
    per = f", {res['seconds_per_image']:.3f} s/image" if res.get("seconds_per_image") else ""
    out.print(
        f"{res['generated']} generated, {res['skipped']} already done, {len(res['blocked'])} blocked "
        f"of {res['rows']} rows → {out_dir}{per}"
    )


@app.command("metrics", cls=RayFlagCommand)
def metrics_cmd(
    real: str | None = typer.Option(None, "--real", help="Reference images: a folder or a manifest .csv."),
    fake: str = typer.Option(..., "--fake", help="Generated images folder (e.g. from `bestshot eval generate`)."),
    real_stats: str | None = typer.Option(
        None,
        "--real-stats",
        help="Precomputed FID statistics of the reference "
        "(.npz with mu, sigma: ours, clean-fid's or pytorch-fid's) instead of "
        "--real; FID only (KID/CMMD need the images).",
    ),
    save_real_stats: str | None = typer.Option(
        None,
        "--save-real-stats",
        help="Write the reference's FID statistics (.npz, mu/sigma) for later --real-stats runs.",
    ),
    resize: str = typer.Option(
        "clean",
        "--resize",
        help="clean: clean-fid's PIL bicubic with antialias (default); "
        "legacy: torch-fidelity's TF1 bilinear / the CLIP processor's 8-bit resize.",
    ),
    extractor: str = typer.Option(
        "clip",
        "--extractor",
        help="clip (offline, NOT comparable with published FID) "
        "or inception (standard FID, needs --inception-weights).",
    ),
    inception_weights: str | None = typer.Option(None, "--inception-weights", help="pt_inception-2015-12-05 .pth."),
    clip: str | None = typer.Option(None, "--clip", help="CLIP folder (default: the embedded model's CLIP)."),
    captions: str | None = typer.Option(
        None,
        "--captions",
        help="Manifest giving the generated images' captions by row id (default: the JSON beside each image).",
    ),
    out_json: str | None = typer.Option(None, "--out", help="Write the results as JSON."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="Real-feature cache (default ~/.cache/bestshot)."),
    device: str | None = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ray: str | None = typer.Option(
        None,
        "--ray",
        metavar="[ADDRESS]",
        help="Extract features on Ray Data "
        "workers (the statistics are computed here, equal to a run without --ray). "
        "Bare --ray: a local Ray; ADDRESS: auto or HOST:PORT (the head's GCS) (image "
        "paths must be readable on every node).",
    ),
    workers: int | None = RAY_WORKERS,
    gpus_per_worker: float | None = GPUS_PER_WORKER,
    cpus_per_worker: float = CPUS_PER_WORKER,
) -> None:
    """FID, KID, Inception Score, CLIP score and CMMD of generated images against reference images."""
    from rich.table import Table

    from ..store import atomic_write_json
    from .sweep import build_extractors, default_cache_dir, evaluate_folder

    if (real is None) == (real_stats is None):
        raise BestshotError("give the reference as --real FOLDER_OR_CSV or as --real-stats STATS.npz (one of them)")
    if save_real_stats and real is None:
        raise BestshotError("--save-real-stats needs --real (the images whose statistics it writes)")
    if ray is None and (workers is not None or gpus_per_worker is not None):
        raise BestshotError(
            "--ray-workers and --gpus-per-worker only apply with --ray — add --ray (a local Ray) "
            "or --ray ADDRESS (a cluster)"
        )
    if ray is None:
        ext, clip_ext = build_extractors(extractor, inception_weights, clip, device, resize)
        res = evaluate_folder(
            real,
            fake,
            ext,
            clip_ext,
            captions_manifest=captions,
            cache_dir=cache_dir or default_cache_dir(),
            real_stats=real_stats,
            save_real_stats=save_real_stats,
        )
    else:
        res = _metrics_on_ray(
            ray,
            dict(
                extractor=extractor,
                inception_weights=inception_weights,
                clip=clip,
                device=device,
                resize=resize,
                workers=workers,
                gpus=gpus_per_worker,
                cpus=cpus_per_worker,
            ),
            dict(
                real=real,
                fake=fake,
                captions_manifest=captions,
                cache_dir=cache_dir or default_cache_dir(),
                real_stats=real_stats,
                save_real_stats=save_real_stats,
            ),
        )
    if out_json:
        atomic_write_json(out_json, res)
    if as_json:
        print(jsonio.dumps(res, indent=2))
        return
    t = Table(
        title=f"{res['n_fake']} generated vs "
        + (f"{res['n_real']} real images" if not real_stats else f"FID statistics {real_stats}")
    )
    t.add_column("metric")
    t.add_column("value", justify="right")
    for label, key, std in (
        ("FID", "fid", None),
        ("KID", "kid_mean", "kid_std"),
        ("Inception Score", "is_mean", "is_std"),
        ("CMMD", "cmmd", None),
        ("CLIP score (100·max(cos,0))", "clip_score", None),
        ("CLIP cosine", "clip_cosine", None),
    ):
        v = res.get(key)
        t.add_row(
            label, "—" if v is None else f"{v:.6g}" + (f" ± {res[std]:.3g}" if std and res.get(std) is not None else "")
        )
    out.print(t)
    out.print(f"extractor: {res['extractor']}\nresize: {res['resize']}")
    if res.get("clip_extractor"):
        out.print(f"CLIP (CMMD, CLIP score): {res['clip_extractor']}; resize: {res['clip_resize']}")
    for note in res["notes"]:
        out.print(f"[dim]note: {note}[/]")
    if save_real_stats:
        out.print(f"written: {save_real_stats} (reference FID statistics)")
    if out_json:
        out.print(f"written: {out_json}")


def _metrics_on_ray(address: str, ext: dict, sets: dict) -> dict:
    """``evaluate_folder`` with the feature extraction on Ray Data workers (``eval metrics --ray``)."""
    from ..scale.cluster import LOCAL, connect, require_ray
    from .sweep import build_ray_extractors, evaluate_folder

    ray_mod = require_ray()
    started_here = not ray_mod.is_initialized() and address == LOCAL
    ray_mod = connect(address)
    try:
        gpus = ext["gpus"]
        if gpus is None:
            gpus = 1.0 if ray_mod.cluster_resources().get("GPU", 0) >= 1 and ext["device"] != "cpu" else 0.0
        e, c = build_ray_extractors(
            ext["extractor"],
            ext["inception_weights"],
            ext["clip"],
            ext["device"],
            ext["resize"],
            workers=ext["workers"],
            num_gpus=gpus,
            num_cpus=ext["cpus"],
        )
        res = evaluate_folder(sets.pop("real"), sets.pop("fake"), e, c, **sets)
        res["ray"] = {"address": address, "workers": e.workers, "gpus_per_worker": gpus, "cpus_per_worker": ext["cpus"]}
        return res
    finally:
        if started_here:
            ray_mod.shutdown()


@app.command("sweep")
def sweep_cmd(
    manifest_csv: str = typer.Option(..., "--manifest", help="Manifest CSV: captions to generate, real images."),
    guidance: str | None = typer.Option(
        None, "--guidance", help="Comma-separated guidance scales (default without --axis: 3,5,7.5,12)."
    ),
    steps: str | None = typer.Option(
        None, "--steps", help="Comma-separated step counts (default without --axis: 15,30,60)."
    ),
    axis: list[str] | None = typer.Option(
        None,
        "--axis",
        help="FIELD=V1,V2,...: sweep any generate setting "
        "(an ImgCfg field: scheduler, steps, guidance, refiner_split, width, ...); "
        "repeat for more axes (X, Y, Z...). --guidance/--steps add their axes.",
    ),
    num: int = typer.Option(64, "--num", help="Rows (images) per cell."),
    out_dir: str = typer.Option("eval_sweep", "--out"),
    model: str = typer.Option("embedded", "--model", "-m"),
    best_of: int = typer.Option(1, "--best-of"),
    seed: int = typer.Option(42, "--seed"),
    size: str | None = typer.Option(None, "--size", help="WIDTHxHEIGHT (default: the model's)."),
    scorer: str | None = typer.Option(None, "--scorer"),
    extractor: str = typer.Option("clip", "--extractor", help="clip or inception (see `eval metrics`)."),
    resize: str = typer.Option("clean", "--resize", help="clean (clean-fid, default) or legacy (see `eval metrics`)."),
    inception_weights: str | None = typer.Option(None, "--inception-weights"),
    clip: str | None = typer.Option(None, "--clip", help="CLIP folder for metrics (default: the embedded one)."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="Real-feature cache (default OUT/feature_cache)."),
    worst: int = typer.Option(16, "--worst", help="Images on the worst-CLIP contact sheet."),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """A grid over generate settings (guidance × steps by default, any ImgCfg field with --axis): generate each
    point, measure it, write results.csv/.md, plots, an image grid per point, an X/Y/Z grid, contact sheet."""
    from .sweep import Axis, SweepConfig, parse_axis, run_sweep, to_markdown

    w, h = _size(size)
    axes: tuple = ()
    if axis:
        axes = tuple(parse_axis(a) for a in axis)
        if guidance:
            axes += (Axis("guidance", _numbers(guidance, "--guidance", float)),)
        if steps:
            axes += (Axis("steps", _numbers(steps, "--steps")),)
    cfg = SweepConfig(
        manifest=manifest_csv,
        out=out_dir,
        guidance=_numbers(guidance or "3,5,7.5,12", "--guidance", float),
        steps=_numbers(steps or "15,30,60", "--steps"),
        axes=axes,
        num=num,
        model=model,
        best_of=best_of,
        seed=seed,
        width=w,
        height=h,
        scorer=scorer,
        device=device,
        extractor=extractor,
        resize=resize,
        inception_weights=inception_weights,
        clip=clip,
        cache_dir=cache_dir,
        worst=worst,
    )
    res = run_sweep(cfg, log=out.print)
    out.print(to_markdown(res["rows"], res["info"]))
    out.print(
        f"written: {out_dir}/results.csv, results.md, plot_*.png, xyz_grid*.png, worst_clip.png, "
        f"<point>/grid.png ({res['info']['seconds']} s)"
    )
