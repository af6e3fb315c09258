"""The ``bestshot`` command line (typer + rich).

Every user-fixable problem surfaces as one ``error: ...`` line on stderr and exit code 2 — never a
traceback. Sub-commands of the other jobs (train, upscale-image, eval, ...) live next to their code
and are mounted here.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from bestshot import jsonio

from .errors import BestshotError
from .scale.cli_options import CPUS_PER_WORKER, GPUS_PER_WORKER, RAY, RAY_BATCH, RAY_WORKERS
from .scale.flags import RayFlagCommand

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="bestshot: generate many candidates, keep the best.",
)
out = Console()
err = Console(stderr=True)


def _read_text_file(path: Path, what: str, empty_hint: str) -> str:
    from .yaml_io import read_user_text

    return read_user_text(path, what, "check the path", empty_hint)


@app.command(cls=RayFlagCommand)  # a bare --ray: a local Ray
def generate(
    prompt: str | None = typer.Argument(None, help="What to draw (omit with --text-file or --prompts-file)."),
    preset: str | None = typer.Option(
        None, "--preset", "-p", help="fast | quality_1min | quality_max | custom | embedded"
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="'embedded' (default), a pipeline folder or a hub id."
    ),
    n: int | None = typer.Option(None, "-n", "--n-images", help="Number of candidates."),
    seed: int | None = typer.Option(None, "--seed", "-s", help="Base seed; candidates use seed, seed+1, ..."),
    steps: int | None = typer.Option(None, "--steps", help="Denoising steps."),
    guidance: float | None = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale."),
    size: str | None = typer.Option(None, "--size", help="WIDTHxHEIGHT, multiples of 8, e.g. 1024x1024."),
    score_min: float | None = typer.Option(
        None,
        "--score-min",
        "--clip-min",
        help="Quality gate in the scorer's units (a cosine for a CLIP, the "
        "weighted sum for an ensemble); default: the scorer's own. "
        "--clip-min is its old name.",
    ),
    negative: str | None = typer.Option(None, "--negative", help="Negative prompt."),
    style_suffix: str | None = typer.Option(None, "--style-suffix", help="Appended to the prompt (not scored)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="euler, euler_a, dpmpp_2m, ddim, unipc, ..."),
    scorer: str | None = typer.Option(
        None, "--scorer", help="CLIP for ranking: 'embedded', a folder, a hub id, open_clip:NAME:TAG."
    ),
    refiner: bool | None = typer.Option(None, "--refiner/--no-refiner", help="SDXL refiner (ensemble of experts)."),
    dtype: str | None = typer.Option(None, "--dtype", help="auto | float32 | float16 | bfloat16"),
    memory: str | None = typer.Option(None, "--memory", help="gpu | model_offload | sequential_offload"),
    device: str | None = typer.Option(None, "--device", help="cuda, cuda:1, cpu (default: cuda if present)."),
    compile: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile the denoiser (CUDA)."),
    vae_tiling: bool | None = typer.Option(
        None, "--vae-tiling/--no-vae-tiling", help="Decode in VAE tiles: large images in bounded memory."
    ),
    vae_slicing: bool | None = typer.Option(
        None, "--vae-slicing/--no-vae-slicing", help="Decode the batch one image at a time (less peak memory)."
    ),
    max_batch: int | None = typer.Option(None, "--max-batch", help="Largest batch per pipeline call."),
    out_dir: str | None = typer.Option(None, "--out", help="Image folder (default images_out)."),
    log_jsonl: str | None = typer.Option(None, "--log", help="JSONL run log (default images_log.jsonl)."),
    save_candidates: bool | None = typer.Option(None, "--save-candidates/--best-only", help="Save every candidate."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of ImgCfg settings."),
    text_file: Path | None = typer.Option(
        None, "--text-file", help="Mode B: an article turned into a prompt by an LLM."
    ),
    llm_backend: str = typer.Option("auto", "--llm-backend", help="auto | vllm | transformers | smollm2 | extractive"),
    llm_model: str | None = typer.Option(None, "--llm-model", help="LLM id or folder for Mode B."),
    prompts_file: Path | None = typer.Option(None, "--prompts-file", help="One prompt per line; resumable batch."),
    results: Path | None = typer.Option(
        None, "--results", help="Batch results JSONL (default PROMPTS_FILE.results.jsonl)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result dict as JSON."),
    show: bool = typer.Option(False, "--show", help="Open the best image in a viewer."),
    ray: str | None = RAY,
    ray_workers: int | None = RAY_WORKERS,
    gpus_per_worker: float | None = GPUS_PER_WORKER,
    cpus_per_worker: float = CPUS_PER_WORKER,
    ray_batch_size: int = RAY_BATCH,
) -> None:
    """Generate N candidates, rank them with CLIP, keep the best that passes the quality gate."""
    from .config import parse_size
    from .generation import generate as run
    from .models.settings import config_from_yaml, resolve_config

    overrides: dict[str, Any] = dict(
        n_images=n,
        steps_base=steps,
        guidance=guidance,
        score_min=score_min,
        negative_prompt=negative,
        style_suffix=style_suffix,
        scheduler=scheduler,
        scorer=scorer,
        refiner=refiner,
        dtype=dtype,
        memory=memory,
        device=device,
        compile=compile,
        vae_tiling=vae_tiling,
        vae_slicing=vae_slicing,
        max_batch=max_batch,
        out_dir=out_dir,
        log_jsonl=log_jsonl,
        save_candidates=save_candidates,
        seed_base=seed,
    )
    if size:
        overrides["width"], overrides["height"] = parse_size(size)
    _check_paths(log_jsonl, prompts_file, results)
    if scorer:
        from .scoring.ensemble import parse_ensemble

        parse_ensemble(scorer)  # a bad weight (taste:nan) is named here, not taken for a CLIP's name
    cfg = config_from_yaml(config) if config else None
    cfg = resolve_config(cfg, preset=preset, model=model, **overrides)

    sources = sum(x is not None for x in (prompt, text_file, prompts_file))
    if sources != 1:
        raise BestshotError("give exactly one of: a PROMPT argument, --text-file FILE (Mode B) or --prompts-file FILE")
    from .scale.cli_options import ray_cfg

    job = ray_cfg(ray, ray_workers, gpus_per_worker, cpus_per_worker, ray_batch_size)
    if job is not None and prompts_file is None:
        raise BestshotError("--ray spreads a batch over workers: use it with --prompts-file FILE")
    if prompts_file is not None:
        _run_batch(prompts_file, results, cfg, as_json, job)
        return
    if text_file is not None:
        text = _read_text_file(text_file, "text file", "Mode B needs an article to turn into a prompt")
        result = _with_progress(
            lambda cb: run(
                mode="auto_prompt",
                text=text,
                cfg=cfg,
                llm_backend=llm_backend,
                llm_model=llm_model,
                show=show,
                on_step=cb,
            ),
            cfg,
            as_json,
        )
    else:
        result = _with_progress(lambda cb: run(prompt, cfg=cfg, show=show, on_step=cb), cfg, as_json)
    _report(result, as_json)
    if not result["ok"]:
        raise typer.Exit(1)


def _check_paths(log_jsonl: str | None, prompts_file: Path | None, results: Path | None) -> None:
    """Files given where a folder is (or the other way round) are named before any model loads."""
    if log_jsonl and Path(log_jsonl).is_dir():
        raise BestshotError(
            f"--log {log_jsonl} is a folder — give the log's file, e.g. {Path(log_jsonl) / 'images_log.jsonl'}"
        )
    if results is not None and results.is_dir():
        name = (prompts_file.name if prompts_file else "prompts") + ".results.jsonl"
        raise BestshotError(f"--results {results} is a folder — give the results file, e.g. {results / name}")
    if prompts_file is not None and prompts_file.is_dir():
        raise BestshotError(f"--prompts-file {prompts_file} is a folder — give a text file with one prompt per line")


def _with_progress(fn, cfg, quiet: bool) -> dict[str, Any]:
    if quiet or not err.is_terminal:
        return fn(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as prog:
        task = prog.add_task(f"{cfg.n_images} candidates", total=cfg.steps_base)

        def cb(step: int, total: int) -> None:
            prog.update(task, completed=step, total=total)

        return fn(cb)


def _report(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(jsonio.dumps(result, default=str))
        return
    from rich.table import Table

    t = Table(title=f"run {result['run_id']} — {result['model']}", show_lines=False)
    t.add_column("seed", justify="right")
    t.add_column("score", justify="right")
    t.add_column("file")
    for c in sorted(result["candidates"], key=lambda c: -c["score"]):
        mark = " ★" if c["seed"] == result.get("best_seed") else ""
        t.add_row(f"{c['seed']}{mark}", f"{c['score']:.4f}", c["path"] or "")
    out.print(t)
    if result["ok"]:
        out.print(
            f"[green]kept[/] seed {result['best_seed']} ({result.get('scorer')} {result['best_score']:.4f}) "
            f"→ {result['img_path']}"
        )
    else:
        why = result.get("reason")
        gate = result.get("gate") or {}
        detail = (
            f" (best {result['best_score']:.4f}; gate {gate.get('on')} {gate.get('value')} < {gate.get('min')})"
            if result.get("best_score") is not None
            else ""
        )
        out.print(f"[yellow]not kept[/]: {why}{detail}")
    ts = result.get("timing_s", {})
    out.print(f"prompt: {result['sd_prompt']!r}   time: " + ", ".join(f"{k} {v:.2f}s" for k, v in ts.items()))


def _row_done(rec: dict[str, Any], results: Path) -> bool:
    """A results line counts as done when its kept image (if any) is still there: from the working
    directory of the run or beside the results file."""
    img = rec.get("img_path")
    return not img or Path(img).is_file() or (results.parent / img).is_file()


def _batch_tag(results: Path, i: int, prompt: str) -> dict[str, Any]:
    """What a batch run's log line carries so that a resume finds it: the results file, line and prompt."""
    return {"results": str(results.resolve()), "line": i + 1, "prompt": prompt}


def _append_row(results: Path, row: dict[str, Any]) -> None:
    from .store import append_jsonl, disk_error

    try:
        append_jsonl(results, row)
    except OSError as e:
        raise disk_error(
            e,
            f"the results file {str(results)!r} (run {row.get('run_id')} is in the run log: "
            "rerunning the same command takes it from there)",
        ) from None


def _rows_in_log(cfg, results: Path, todo: list[tuple[int, str]]) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """(results rows rebuilt from the run log, prompts still to make): a run the log has for one of ``todo``'s
    lines of this results file (its kept image, if any, still there) is not made again."""
    from .store import Store, read_jsonl

    store = Store(root=Path(cfg.out_dir), log_path=Path(cfg.log_jsonl))
    found: dict[tuple[int, str], dict[str, Any]] = {}
    want = {(i + 1, p) for i, p in todo}
    key = str(results.resolve())
    for rec in read_jsonl(store.log_path):
        tag = rec.get("batch")
        if isinstance(tag, dict) and tag.get("results") == key and (tag.get("line"), tag.get("prompt")) in want:
            found[(tag["line"], tag["prompt"])] = rec  # the latest run of a line wins
    rows, left = [], []
    for i, p in todo:
        rec = found.get((i + 1, p))
        if rec is None:
            left.append((i, p))
            continue
        row = {k: v for k, v in rec.items() if k not in ("path_base", "batch")}
        where = lambda path, rec=rec: str(store.resolve_path(path, rec)) if path else path  # noqa: E731
        row["img_path"] = where(rec.get("img_path"))
        row["candidates"] = [
            {**c, "path": where(c.get("path"))} if isinstance(c, dict) else c for c in rec.get("candidates") or []
        ]
        row = {"line": i + 1, "prompt": p, **row}
        if _row_done(row, results):
            rows.append(row)
        else:
            left.append((i, p))
    return rows, left


def _run_batch(prompts_file: Path, results: Path | None, cfg, as_json: bool, job=None) -> None:
    """One result per line of ``prompts_file``; lines already in the results file (with their image) are
    skipped. With ``job`` (``--ray``) the lines are spread over Ray workers, each running the same
    ``generate``; the results file then lists this run's lines in line order."""
    from .generation import generate as run
    from .store import read_jsonl

    lines = [
        ln.strip() for ln in _read_text_file(prompts_file, "prompts file", "write one prompt per line").splitlines()
    ]
    todo = [(i, p) for i, p in enumerate(lines) if p and not p.startswith("#")]
    if not todo:
        raise BestshotError(f"{prompts_file} holds no prompts — write one prompt per line")
    results = results or prompts_file.with_name(prompts_file.name + ".results.jsonl")
    old = read_jsonl(results) if results.exists() else []
    done = {(r.get("line"), r.get("prompt")) for r in old if _row_done(r, results)}
    skipped = sum(1 for i, p in todo if (i + 1, p) in done)
    todo = [(i, p) for i, p in todo if (i + 1, p) not in done]
    markers = results.with_name(results.name + ".ray") / "done"  # --ray: rows its workers finished
    settings = None
    if job is not None or markers.is_dir():
        from .scale.batch import prune_markers, settings_digest

        settings = settings_digest(cfg)  # a marker made under other settings is not this run's row
    if todo and markers.is_dir():  # a --ray run whose driver died: take the rows its workers finished
        rows = [{"key": i, "line": i + 1, "prompt": p, "settings": settings} for i, p in todo]
        recovered = prune_markers(markers, rows, lambda r: _row_done(r, results))
        for r in recovered:
            _append_row(results, r)
        old += recovered
        taken = {r.get("line") for r in recovered}
        skipped, todo = skipped + len(recovered), [(i, p) for i, p in todo if i + 1 not in taken]
        if recovered:
            err.print(
                f"took {len(recovered)} prompt(s) that an interrupted --ray run with the same settings had "
                f"finished into {results} (to make them again, delete {markers})"
            )

    def show(r: dict[str, Any]) -> None:
        if as_json:
            print(jsonio.dumps({k: v for k, v in r.items() if k != "prompt"}, default=str), flush=True)
        else:
            state = f"kept {r['img_path']}" if r["ok"] else f"not kept ({r.get('reason')})"
            out.print(f"{r['line']}: {r['prompt'][:60]!r} → {state}")

    if job is not None and todo:
        import functools

        from .generation import prompt_row_maker
        from .scale.batch import run_rows, summary_table
        from .store import atomic_write_text, ensure_writable

        ensure_writable(cfg.out_dir, "to the output folder")  # before any worker loads a model
        ensure_writable(results.parent, "the results file in")
        report = run_rows(
            [{"key": i, "line": i + 1, "prompt": p, "settings": settings} for i, p in todo],
            functools.partial(prompt_row_maker, cfg),
            job,
            title="generating",
            on_result=lambda r: _append_row(results, r),  # at once: a killed driver loses only rows in flight
            progress=not as_json,
            console=err,
            journal=results.with_name(results.name + ".ray"),
            markers=markers,
        )
        # the same file as one process writes: earlier lines, then this run's in line order
        new_lines = "".join(jsonio.dumps(r, ensure_ascii=False) + "\n" for r in report.results)
        atomic_write_text(results, "".join(jsonio.dumps(r, ensure_ascii=False) + "\n" for r in old) + new_lines)
        for r in report.results:
            show(r)
        if not as_json:
            err.print(summary_table(report))
        todo = []
    if todo:  # rows whose run is logged but whose results line was lost (a full disk): take them from the log
        recovered, todo = _rows_in_log(cfg, results, todo)
        for row in recovered:
            _append_row(results, row)
        skipped += len(recovered)
        if recovered:
            err.print(f"took {len(recovered)} prompt(s) already in the run log {cfg.log_jsonl} into {results}")
    for i, p in todo:
        r = run(p, cfg=cfg, extra_record={"batch": _batch_tag(results, i, p)})
        r = {k: v for k, v in r.items() if k != "batch"}  # the log's tag; the row says it already (as --ray rows)
        _append_row(results, {"line": i + 1, "prompt": p, **r})
        show({"line": i + 1, "prompt": p, **r})
    if skipped:
        err.print(f"skipped {skipped} prompt(s) already in {results}")


@app.command()
def presets() -> None:
    """List the presets and what they set."""
    from .config import PRESETS

    for name, values in PRESETS.items():
        out.print(f"[bold]{name}[/]: " + (", ".join(f"{k}={v}" for k, v in values.items()) or "ImgCfg defaults"))


@app.command("png-info")
def png_info(image: Path = typer.Argument(..., help="A PNG written by bestshot or AUTOMATIC1111.")) -> None:
    """Print the generation parameters stored in a PNG."""
    from .store import read_png_info

    if not image.exists():
        raise BestshotError(f"{image} does not exist — check the path")
    info = read_png_info(image)
    out.print_json(jsonio.dumps({"parameters": info.get("parameters"), "parsed": info.get("parsed")}, default=str))


# Sub-commands that live next to their job's code: module → (how to mount, top-level names it provides).
_SUBAPPS = {
    "bestshot.train.cli": ("group", ("train",)),
    "bestshot.upscale.cli": ("commands", ("upscale-image",)),
    "bestshot.evaluate.cli": ("group", ("eval",)),
    "bestshot.interrogate.cli": ("commands", ("interrogate", "interrogate-eval", "train")),
    "bestshot.curate.cli": ("commands", ("stage1", "upscale", "run")),
    "bestshot.server.cli": ("commands", ("serve",)),
    "bestshot.curate.taste_cli": ("group", ("taste",)),
}


_MOUNTED: set[str] = set()


def _mount_subapps(argv: list[str]) -> None:
    """Mount the other jobs' sub-commands. Only the module a command needs is imported (the server
    pulls in FastAPI, the trainers torch): ``bestshot generate`` and errors stay quick to start."""
    import importlib

    wanted = next((a for a in argv[1:] if not a.startswith("-")), None)
    train_app = None
    for module, (kind, names) in _SUBAPPS.items():
        if (wanted is not None and wanted not in names) or module in _MOUNTED:
            continue
        _MOUNTED.add(module)
        sub = importlib.import_module(module).app
        if kind == "group":
            app.add_typer(sub, name=names[0])
            if names[0] == "train":
                train_app = sub
            continue
        for cmd in sub.registered_commands:
            name = cmd.name or cmd.callback.__name__.replace("_", "-")
            if name == "train-captioner":  # the captioner trains beside the other models
                if train_app is None:
                    train_app = importlib.import_module("bestshot.train.cli").app
                    app.add_typer(train_app, name="train")
                train_app.command("captioner", help=cmd.help)(cmd.callback)
            else:
                app.command(name, help=cmd.help, cls=cmd.cls)(cmd.callback)  # cls: e.g. a bare --ray


def _started_as_command() -> bool:
    import os

    prog = os.path.basename(sys.argv[0]) if sys.argv else ""
    return prog in ("bestshot", "cli.py")


def _startup_argv() -> list[str]:
    """When started as the ``bestshot`` command, mount only what argv needs; imported as a library
    (tests, ``from bestshot.cli import app``), mount everything."""
    return list(sys.argv) if _started_as_command() else ["bestshot"]


if _started_as_command():
    from . import _omp

    _omp.apply()  # before any module loads torch (a sub-command's may, when mounted just below)
_mount_subapps(_startup_argv())


def _refuse_non_finite(fn):
    """Wrap a command so that a NaN or infinite float flag is one clear error, not a run that logs ``NaN``.

    typer parses ``--guidance nan`` into ``float('nan')`` (so does ``inf``); no bestshot setting means
    anything with them, and they would reach the log as non-JSON. The check names the flag as typed."""
    import functools
    import inspect

    from .jsonio import check_finite

    if getattr(fn, "_bestshot_finite", False):
        return fn
    names = {}
    for name, p in inspect.signature(fn).parameters.items():
        decls = [d for d in getattr(p.default, "param_decls", None) or () if isinstance(d, str)]
        default = decls[0] if decls else name.upper()
        if type(p.default).__name__ == "OptionInfo" and not decls:
            default = "--" + name.replace("_", "-")  # typer's own flag name for an undeclared option
        longs = [d for d in decls if d.startswith("--")]
        names[name] = " / ".join(longs) if longs else default  # every long name (an option and its old alias)

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        for name, value in kwargs.items():
            check_finite(value, names.get(name, name), "pass an ordinary number; NaN and infinity are not settings")
        return fn(*args, **kwargs)

    checked._bestshot_finite = True
    return checked


def _check_float_flags(typer_app) -> None:
    """Apply :func:`_refuse_non_finite` to every command of ``typer_app`` and its groups."""
    for info in typer_app.registered_commands:
        if info.callback is not None:
            info.callback = _refuse_non_finite(info.callback)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _check_float_flags(group.typer_instance)


def _showwarning(message, category, filename, lineno, file=None, line=None):
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)  # one line, as errors


def main() -> None:
    from . import _quiet

    _quiet.apply()  # third-party noise off, narrowly (see bestshot/_quiet.py); our own warnings stay
    warnings.showwarning = _showwarning
    try:
        _mount_subapps(sys.argv)
        _check_float_flags(app)
        app()
    except BestshotError as e:
        from rich.markup import escape

        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)  # "[ray]" is no markup
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
