"""What ``bestshot generate`` prints: the candidates' table and verdict, the progress bar, one-line warnings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from bestshot import jsonio

out = Console()
err = Console(stderr=True)


def read_text_file(path: Path, what: str, empty_hint: str) -> str:
    from .yaml_io import read_user_text

    return read_user_text(path, what, "check the path", empty_hint)


def with_progress(fn, cfg, quiet: bool) -> dict[str, Any]:
    """``fn(on_step)``, with a progress bar of the denoising steps on a terminal (none when ``quiet``)."""
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


def report(result: dict[str, Any], as_json: bool) -> None:
    """A generate result: as JSON, or a table of the candidates and the verdict."""
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


def show_error(message: str) -> None:
    """The one ``error: ...`` line of a refused command."""
    from rich.markup import escape

    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # "[ray]" is no markup


def show_usage_error(e: Exception) -> None:
    """Typer's usage errors (a bad flag value, an unknown flag, a missing argument) as one ``error:`` line
    naming the command's ``--help``, like bestshot's own refusals; a bare group still prints its help."""
    ctx = getattr(e, "ctx", None)
    if type(e).__name__ == "NoArgsIsHelpError" or not hasattr(e, "format_message"):
        e.show()  # `bestshot` / `bestshot eval` alone: the help text, as before
        return
    where = f" — see '{ctx.command_path} --help'" if ctx is not None else ""
    show_error(f"{e.format_message().rstrip('.')}{where}")


def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: one ``warning: ...`` line, as errors are."""
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
