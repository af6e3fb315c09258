"""``bestshot generate --prompts-file FILE``: one result per prompt line, resumable, optionally over Ray.

The results file gets one JSON line per prompt as soon as it is made; a rerun skips the lines whose result
(and kept image) is there, takes back the rows an interrupted ``--ray`` run's workers finished, and the rows
the run log has but the results file lost (a full disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bestshot import jsonio

from .cli_output import err, out, read_text_file
from .errors import BestshotError


def check_paths(log_jsonl: str | None, prompts_file: Path | None, results: Path | None) -> None:
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


def run_batch(prompts_file: Path, results: Path | None, cfg, as_json: bool, job=None) -> None:
    """One result per line of ``prompts_file``; lines already in the results file (with their image) are
    skipped. With ``job`` (``--ray``) the lines are spread over Ray workers, each running the same
    ``generate``; the results file then lists this run's lines in line order."""
    from .generation import generate as run
    from .store import read_jsonl

    lines = [
        ln.strip() for ln in read_text_file(prompts_file, "prompts file", "write one prompt per line").splitlines()
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
        from .scale.batch import settings_digest

        settings = settings_digest(cfg)  # a marker made under other settings is not this run's row
    if todo and markers.is_dir():  # a --ray run whose driver died: take the rows its workers finished
        recovered, todo = _rows_from_markers(markers, results, todo, settings)
        old += recovered
        skipped += len(recovered)
    if job is not None and todo:
        _run_on_ray(cfg, job, results, todo, settings, old, as_json)
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
        _show({"line": i + 1, "prompt": p, **r}, as_json)
    if skipped:
        err.print(f"skipped {skipped} prompt(s) already in {results}")


def _show(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(jsonio.dumps({k: v for k, v in r.items() if k != "prompt"}, default=str), flush=True)
    else:
        state = f"kept {r['img_path']}" if r["ok"] else f"not kept ({r.get('reason')})"
        out.print(f"{r['line']}: {r['prompt'][:60]!r} → {state}")


def _rows_from_markers(
    markers: Path, results: Path, todo: list[tuple[int, str]], settings: str | None
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """(rows an interrupted ``--ray`` run's workers finished under the same settings, appended to the results
    file; the prompts still to make)."""
    from .scale.batch import prune_markers

    rows = [{"key": i, "line": i + 1, "prompt": p, "settings": settings} for i, p in todo]
    recovered = prune_markers(markers, rows, lambda r: _row_done(r, results))
    for r in recovered:
        _append_row(results, r)
    taken = {r.get("line") for r in recovered}
    if recovered:
        err.print(
            f"took {len(recovered)} prompt(s) that an interrupted --ray run with the same settings had "
            f"finished into {results} (to make them again, delete {markers})"
        )
    return recovered, [(i, p) for i, p in todo if i + 1 not in taken]


def _run_on_ray(cfg, job, results: Path, todo: list[tuple[int, str]], settings, old: list, as_json: bool) -> None:
    """Make ``todo``'s prompts on Ray workers; the results file then holds ``old`` and these rows in line order."""
    import functools

    from .generation import prompt_row_maker
    from .scale.batch import run_rows, summary_table
    from .store import atomic_write_text, ensure_writable

    ensure_writable(cfg.out_dir, "to the output folder")  # before any worker loads a model
    ensure_writable(results.parent, "the results file in")
    journal = results.with_name(results.name + ".ray")
    report = run_rows(
        [{"key": i, "line": i + 1, "prompt": p, "settings": settings} for i, p in todo],
        functools.partial(prompt_row_maker, cfg),
        job,
        title="generating",
        on_result=lambda r: _append_row(results, r),  # at once: a killed driver loses only rows in flight
        progress=not as_json,
        console=err,
        journal=journal,
        markers=journal / "done",
    )
    # the same file as one process writes: earlier lines, then this run's in line order
    new_lines = "".join(jsonio.dumps(r, ensure_ascii=False) + "\n" for r in report.results)
    atomic_write_text(results, "".join(jsonio.dumps(r, ensure_ascii=False) + "\n" for r in old) + new_lines)
    for r in report.results:
        _show(r, as_json)
    if not as_json:
        err.print(summary_table(report))
