"""The report of ``eval world --variant``: per object count and variant, rates with a Wilson interval, the gate's
refusals and wall time; written as ``world_variants.json``, ``.md`` and a plot of match rate against time."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bestshot import jsonio

from ..store import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..train.candidates import ATTRS

# the composition goal: full-match % per object count, at most TIME_BUDGET × the first variant's wall time
GOALS = {1: 99.0, 2: 90.0, 3: 70.0}
TIME_BUDGET = 2.0


def wilson(k: int, n: int, level: float = 0.95) -> list[float] | None:
    """The Wilson score interval of ``k`` successes in ``n``, in percent (None for n = 0)."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return [round(100 * ci.low, 1), round(100 * ci.high, 1)]


def _pct(k: int, n: int) -> float:
    return round(100.0 * k / max(1, n), 2)


def _cell(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    cell: dict[str, Any] = {"n": n}
    for a in ATTRS:
        cell[a] = _pct(sum(r["verdict"][a] for r in rows), n)
    k = sum(r["verdict"]["match"] for r in rows)
    cell["match_ci95"] = wilson(k, n)
    cell["gated_out"] = _pct(sum(not r["ok"] for r in rows), n)
    cell["ungated_match"] = _pct(sum(r["ungated_match"] for r in rows), n)
    secs = sorted(r["seconds"] for r in rows)
    cell["seconds_per_prompt"] = round(sum(secs) / n, 3) if n else None
    cell["seconds_median"] = round(secs[n // 2], 3) if n else None
    cell["candidates"] = round(sum(r["n_candidates"] for r in rows) / n, 2) if n else None
    return cell


def summarise(
    names: Sequence[str], groups: dict[int, list[str]], rows: dict[tuple[str, int, int], dict[str, Any]]
) -> dict[str, Any]:
    """``{"2_object": {variant: cell}}``; each cell's ``time_ratio`` is its mean wall time over the first
    variant's on the prompts both finished, and ``meets_goal`` says whether it reaches :data:`GOALS` within
    :data:`TIME_BUDGET` × that time."""
    out: dict[str, Any] = {}
    for n_obj, prompts in groups.items():
        group: dict[str, Any] = {}
        for name in names:
            done = [rows[(name, n_obj, i)] for i in range(len(prompts)) if (name, n_obj, i) in rows]
            cell = _cell(done)
            both = [i for i in range(len(prompts)) if (name, n_obj, i) in rows and (names[0], n_obj, i) in rows]
            ref = sum(rows[(names[0], n_obj, i)]["seconds"] for i in both)
            cell["time_ratio"] = round(sum(rows[(name, n_obj, i)]["seconds"] for i in both) / ref, 3) if ref else None
            goal = GOALS.get(n_obj)
            cell["goal"] = goal
            cell["meets_goal"] = (
                None
                if goal is None or not done or cell["time_ratio"] is None
                else bool(cell["match"] >= goal and cell["time_ratio"] <= TIME_BUDGET)
            )
            group[name] = cell
        out[f"{n_obj}_object"] = group
    return out


def to_markdown(res: dict[str, Any]) -> str:
    first = res["variants"][0]["name"] if res["variants"] else "-"
    lines = [
        f"World variants — model `{res['model']}`, {res['n_prompts']} held-out prompts per object count "
        f"(seed {res['prompt_seed']}), {res['size'][0]}x{res['size'][1]}; each run as `bestshot generate` runs it "
        f"(default scorer and gate), the kept image judged by the oracle; {res['order']}.",
        "",
        "| objects | variant | settings | n | full match % | 95 % CI | shape % | colour % | count % | position % "
        f"| gated out % | s/prompt | × {first} | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    settings = {v["name"]: v["settings"] or "(defaults)" for v in res["variants"]}
    for gname, group in res["groups"].items():
        for name, c in group.items():
            ci = c["match_ci95"]
            goal = "" if c["meets_goal"] is None else (f"≥{c['goal']:g} {'✓' if c['meets_goal'] else '✗'}")
            secs = "–" if c["seconds_per_prompt"] is None else f"{c['seconds_per_prompt']:.2f}"
            ratio = "–" if c["time_ratio"] is None else f"{c['time_ratio']:.2f}"
            lines.append(
                f"| {gname.split('_')[0]} | {name} | `{settings.get(name, '')}` | {c['n']} | {c['match']:.1f} | "
                f"{'–' if ci is None else f'{ci[0]:.1f}–{ci[1]:.1f}'} | {c['shape']:.1f} | {c['colour']:.1f} | "
                f"{c['count']:.1f} | {c['position']:.1f} | {c['gated_out']:.1f} | {secs} | {ratio} | {goal} |"
            )
    lines += [
        "",
        "A run the quality gate refuses keeps no image: it counts as a miss (every column) and under gated out. "
        f"s/prompt: wall seconds of each `generate()` call (the model loaded once before); × {first}: the time "
        f"ratio on the same prompts. goal: full match ≥ the target within {TIME_BUDGET:g}× {first}'s time.",
    ]
    if not res["complete"]:
        lines += ["", f"Partial: {res['rows_done']} of {res['rows_total']} runs ({res['stopped']}); rerun to resume."]
    m = res["machine"]
    where = f"{m['platform']}, {m['cpus']} CPUs, torch threads: {m['torch_threads']}, device {m['device']}"
    lines += ["", f"Machine: {where}."]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> Path | None:
    """Match rate (with its interval) against wall time per prompt, one panel per object count; None when
    matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = list(res["groups"].items())
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, (gname, group) in zip(axes[0], groups):
        n_obj = int(gname.split("_")[0])
        for name, c in group.items():
            if not c["n"] or c["seconds_per_prompt"] is None:
                continue
            lo, hi = c["match_ci95"]
            ax.errorbar(
                c["seconds_per_prompt"], c["match"], yerr=[[c["match"] - lo], [hi - c["match"]]], fmt="o", capsize=3
            )
            ax.annotate(name, (c["seconds_per_prompt"], c["match"]), textcoords="offset points", xytext=(5, 4))
        if n_obj in GOALS:
            ax.axhline(GOALS[n_obj], linestyle="--", color="gray", linewidth=1)
        ax.set_title(f"{n_obj} object{'s' if n_obj > 1 else ''}")
        ax.set_xlabel("wall seconds per prompt")
        ax.set_ylabel("full match % (95 % Wilson)")
        ax.set_ylim(0, 103)
        ax.set_xlim(left=0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_report(out: Path, res: dict[str, Any]) -> dict[str, Any]:
    """``world_variants.json``, ``.md`` and ``.png`` (skipped, with a note, without matplotlib) in ``out``."""
    png = plot(res, out / "world_variants.png") if res["rows_done"] else None
    res["files"] = {
        "json": str(out / "world_variants.json"),
        "markdown": str(out / "world_variants.md"),
        "plot": str(png) if png else None,
    }
    if png is None:
        res["plot_note"] = "no plot: matplotlib is not installed" if res["rows_done"] else "no plot: no runs yet"
    atomic_write_json(out / "world_variants.json", res)
    atomic_write_text(out / "world_variants.md", to_markdown(res))
    return res


def dumps(res: dict[str, Any]) -> str:
    return jsonio.dumps(res, indent=2)
