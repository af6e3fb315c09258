"""The ``bestshot`` command line (typer + rich).

Every user-fixable problem surfaces as one ``error: ...`` line on stderr and exit code 2 — never a
traceback. ``generate``'s settings flags are made from :class:`bestshot.config.ImgCfg`'s field metadata
(bestshot.config_flags); the sub-commands of the other jobs (train, upscale-image, eval, serve, ...) live
next to their code and are imported only when used (bestshot.cli_group).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import typer

from bestshot import jsonio

from .cli_group import Lazy, LazyGroup
from .cli_output import err, out, report, show_error, show_usage_error, showwarning, with_progress
from .config import ImgCfg
from .config_flags import field_options
from .errors import BestshotError
from .scale.cli_options import CPUS_PER_WORKER, GPUS_PER_WORKER, RAY, RAY_BATCH, RAY_WORKERS
from .scale.flags import RayFlagCommand


class Commands(LazyGroup):
    """bestshot's commands: those below, then the other jobs' (module, command), imported when used."""

    lazy = {
        "upscale-image": Lazy("bestshot.upscale.cli", "upscale-image"),
        "interrogate": Lazy("bestshot.interrogate.cli", "interrogate"),
        "interrogate-eval": Lazy("bestshot.interrogate.cli", "interrogate-eval"),
        "stage1": Lazy("bestshot.curate.cli", "stage1"),
        "upscale": Lazy("bestshot.curate.cli", "upscale"),
        "run": Lazy("bestshot.curate.cli", "run"),
        "serve": Lazy("bestshot.server.cli", "serve"),
        # the captioner trains beside the other models
        "train": Lazy("bestshot.train.cli", extra=(("captioner", "bestshot.interrogate.cli", "train-captioner"),)),
        "eval": Lazy("bestshot.evaluate.cli"),
        "taste": Lazy("bestshot.curate.taste_cli"),
    }


app = typer.Typer(
    cls=Commands,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="bestshot: generate many candidates, keep the best.",
)


@app.command(cls=RayFlagCommand)  # a bare --ray: a local Ray
@field_options(ImgCfg)  # --preset, --model, -n, --seed, ...: every ImgCfg field with flag metadata
def generate(
    prompt: str | None = typer.Argument(None, help="What to draw (omit with --text-file or --prompts-file)."),
    size: str | None = typer.Option(None, "--size", help="WIDTHxHEIGHT, multiples of 8, e.g. 1024x1024."),
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
    **settings: Any,
) -> None:
    """Generate N candidates, rank them with CLIP, keep the best that passes the quality gate."""
    from .cli_batch import check_paths, run_batch
    from .config import parse_size
    from .generation import generate as run
    from .models.settings import config_from_yaml, resolve_config

    if size:
        settings["width"], settings["height"] = parse_size(size)
    check_paths(settings["log_jsonl"], prompts_file, results)
    if settings["scorer"]:
        from .scoring.ensemble import parse_ensemble

        parse_ensemble(settings["scorer"])  # a bad weight (taste:nan) is named here, not taken for a CLIP's name
    cfg = resolve_config(config_from_yaml(config) if config else None, **settings)

    if sum(x is not None for x in (prompt, text_file, prompts_file)) != 1:
        raise BestshotError("give exactly one of: a PROMPT argument, --text-file FILE (Mode B) or --prompts-file FILE")
    from .scale.cli_options import ray_cfg

    job = ray_cfg(ray, ray_workers, gpus_per_worker, cpus_per_worker, ray_batch_size)
    if job is not None and prompts_file is None:
        raise BestshotError("--ray spreads a batch over workers: use it with --prompts-file FILE")
    if prompts_file is not None:
        run_batch(prompts_file, results, cfg, as_json, job)
        return
    if text_file is not None:
        from .cli_output import read_text_file

        text = read_text_file(text_file, "text file", "Mode B needs an article to turn into a prompt")
        kwargs = dict(mode="auto_prompt", text=text, llm_backend=llm_backend, llm_model=llm_model)
        result = with_progress(lambda cb: run(cfg=cfg, show=show, on_step=cb, **kwargs), cfg, as_json)
    else:
        result = with_progress(lambda cb: run(prompt, cfg=cfg, show=show, on_step=cb), cfg, as_json)
    report(result, as_json)
    if not result["ok"]:
        raise typer.Exit(1)


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


def _started_as_command() -> bool:
    """Whether this process is the ``bestshot`` command (not a library import, e.g. a test's)."""
    return os.path.basename(sys.argv[0]) in ("bestshot", "cli.py") if sys.argv else False


if _started_as_command():
    from . import _omp

    _omp.apply()  # before any module loads torch (a sub-command's, imported when it runs)


def main() -> None:
    from . import _quiet

    _quiet.apply()  # third-party noise off, narrowly (see bestshot/_quiet.py); our own warnings stay
    warnings.showwarning = showwarning
    try:
        code = app(standalone_mode=False)
    except BestshotError as e:
        show_error(str(e))
        sys.exit(2)
    except typer.TyperException as e:  # typer's own usage errors (a bad value, an unknown flag): one line too
        show_usage_error(e)
        sys.exit(getattr(e, "exit_code", 2))
    except (KeyboardInterrupt, typer.Abort):
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)  # as typer's standalone mode


if __name__ == "__main__":
    main()
