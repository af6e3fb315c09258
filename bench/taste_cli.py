"""Taste as users run it: the documented commands, through bestshot's own CLI, judged by the world's oracle.

    stage1 → taste collect → (the user deletes) → taste collect → taste train
           → generate --scorer clip+taste@HEAD:W

Per curation draw (its own curated prompts and seeds):

1. ``bestshot stage1 --count M`` once per curated prompt (``manual_prompt.txt`` = the prompt, no prompt
   options) on the shipped ``config.yaml`` with only ``model.base`` set — the model's own defaults apply;
2. ``bestshot taste collect`` (embeds every stage-1 image), then the simulated user deletes each stage-1 PNG the
   oracle finds not matching its prompt or showing the hidden dislike (``dark``: a black background), then
   ``taste collect`` again and ``bestshot taste train`` (``--train-args``, e.g. ``--balanced``);
3. the taste weight is chosen by validation: ``bestshot generate --prompts-file VAL --scorer
   clip+taste@HEAD:W`` for each ``--weights`` value on validation prompts disjoint from the test prompts; the
   weight with the largest fall of disliked picks whose full-match drop is ≤ ``--max-drop`` points (else the
   smallest drop) wins;
4. test: ``bestshot generate --prompts-file TEST`` with the default scorer (once) and with
   ``--scorer clip+taste@HEAD:W*`` (per draw), the quality gate included. A refused run keeps no image: it
   counts as no disliked pick and no match.

Reported per draw and averaged: refused runs, disliked picks and oracle full match (% of test prompts).
Every command runs in this process through the Typer app (the loader's model cache is shared), exactly as
typed on the command line.

    python bench/taste_cli.py [--curate 50] [--per-prompt 1] [--test 75] [--val 25] [--n 8] [--draws 3]
                              [--weights 0.5,1,2] [--train-args "--balanced"] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from taste_world import DARK, free_prompts  # noqa: E402


def cli(*args: str, ok: Sequence[int] = (0,)) -> str:
    """Run ``bestshot ARGS`` in this process; its output, or an error naming the command."""
    from typer.testing import CliRunner

    from bestshot.cli import app

    r = CliRunner().invoke(app, list(args))
    if r.exit_code not in ok:
        raise RuntimeError(f"bestshot {shlex.join(args)} exited {r.exit_code}: {r.output[-2000:]}")
    return r.output


def verdict(path: str | Path, prompt: str) -> tuple[bool, bool]:
    """(oracle full match, disliked) of one image."""
    from PIL import Image

    from bestshot.world.captions import parse_prompt
    from bestshot.world.oracle import _judge, analyse

    with Image.open(path) as im:
        an = analyse(im.convert("RGB"))
    return bool(_judge(parse_prompt(prompt), an).match), an.background in DARK


def curate(
    work: Path,
    model: str,
    prompts: Sequence[str],
    per_prompt: int,
    seed: int,
    embedder: str,
    train_args: Sequence[str],
    extra_cfg: dict[str, Any],
    user: str = "oracle",
) -> dict[str, Any]:
    """One curation draw through the CLI; returns the head path and what the user deleted."""
    import yaml

    from bestshot.curate.config import default_config_text

    work.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(default_config_text())
    cfg["model"]["base"] = model
    cfg["generation"]["max_prompt_options"] = 0
    cfg["lora"]["enabled"] = False
    for section, values in extra_cfg.items():
        cfg[section].update(values)
    for i, p in enumerate(prompts):
        cfg["generation"]["seed"] = seed + 100 * i
        (work / "config.yaml").write_text(yaml.safe_dump(cfg))
        (work / "manual_prompt.txt").write_text(p + "\n")
        (work / "prompt_options.txt").write_text("")
        cli("stage1", "--count", str(per_prompt), "--config", str(work / "config.yaml"))
    cli("taste", "collect", "-w", str(work), "--scorer", embedder)
    out = work / "outputs"
    deleted = disliked = kept = 0
    for i, meta in enumerate(sorted((out / "metadata").glob("*.json"))):
        rec = json.loads(meta.read_text())
        png = out / rec["stages"]["stage1"]["file"]
        match, bad = verdict(png, rec["prompt"])
        disliked += bad
        if (bad or not match) if user == "oracle" else i % 2:
            png.unlink()
            deleted += 1
        else:
            kept += 1
    cli("taste", "collect", "-w", str(work), "--scorer", embedder)
    cli("taste", "train", "-w", str(work), "--scorer", embedder, *train_args)
    head = out / "taste" / "head.json"
    saved = json.loads(head.read_text())
    info = saved.get("info") or saved  # the head's fields sit at its top level (cv_accuracy, majority_rate, ...)
    return {
        "head": str(head),
        "kept": kept,
        "deleted": deleted,
        "disliked": disliked,
        "cv_accuracy": info.get("cv_accuracy"),
        "always_delete": deleted / max(1, kept + deleted),
    }


def run_prompts(
    work: Path, tag: str, model: str, prompts: Sequence[str], n: int, scorer: str | None, gen_args: Sequence[str]
) -> dict[str, np.ndarray]:
    """``bestshot generate --prompts-file`` and the oracle's verdict on each kept image."""
    work.mkdir(parents=True, exist_ok=True)
    pf = work / f"{tag}.txt"
    pf.write_text("\n".join(prompts) + "\n")
    res = work / f"{tag}.results.jsonl"
    args = [
        "generate",
        "--prompts-file",
        str(pf),
        "--results",
        str(res),
        "--model",
        model,
        "-n",
        str(n),
        "--out",
        str(work / f"{tag}_images"),
        "--log",
        str(work / f"{tag}.log.jsonl"),
        *gen_args,
    ]
    cli(*args, *(["--scorer", scorer] if scorer else []), ok=(0, 1))  # 1: some rows refused by the gate
    rows = {r["line"]: r for r in map(json.loads, res.read_text().splitlines())}
    refused, disliked, match = (np.zeros(len(prompts)) for _ in range(3))
    for i, p in enumerate(prompts):
        r = rows[i + 1]
        if not r["ok"]:
            refused[i] = 1
            continue
        m, d = verdict(r["img_path"], p)
        match[i], disliked[i] = m, d
    return {"refused": refused, "disliked": disliked, "match": match}


def summary(base: dict[str, np.ndarray], taste: dict[str, np.ndarray]) -> dict[str, float]:
    bd, td = base["disliked"].mean(), taste["disliked"].mean()
    return {
        "refused_base_pct": 100 * base["refused"].mean(),
        "refused_taste_pct": 100 * taste["refused"].mean(),
        "disliked_base_pct": 100 * bd,
        "disliked_taste_pct": 100 * td,
        "disliked_fall_pct": 100 * (1 - td / bd) if bd > 0 else 0.0,
        "match_base_pct": 100 * base["match"].mean(),
        "match_taste_pct": 100 * taste["match"].mean(),
        "match_drop_points": 100 * (base["match"].mean() - taste["match"].mean()),
    }


def choose_weight(scores: dict[float, dict[str, float]], max_drop: float) -> float:
    """The weight with the largest disliked fall among those within ``max_drop`` points; else the smallest drop."""
    ok = [w for w, s in scores.items() if s["match_drop_points"] <= max_drop]
    if ok:
        return max(ok, key=lambda w: (scores[w]["disliked_fall_pct"], -w))
    return min(scores, key=lambda w: scores[w]["match_drop_points"])


def main(argv: Sequence[str] | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--embedder", default="embedded", help="--scorer of taste collect/train (the head's CLIP)")
    ap.add_argument("--curate", type=int, default=50, help="curated prompts per draw")
    ap.add_argument("--per-prompt", type=int, default=1, help="stage-1 images per curated prompt")
    ap.add_argument("--test", type=int, default=75, help="test prompts")
    ap.add_argument("--val", type=int, default=25, help="validation prompts (weight choice)")
    ap.add_argument("--n", type=int, default=8, help="candidates per generate run")
    ap.add_argument("--draws", type=int, default=3, help="curation draws")
    ap.add_argument("--weights", default="0.5,1,2")
    ap.add_argument("--max-drop", type=float, default=2.0, help="full-match points the weight may cost on validation")
    ap.add_argument("--train-args", default="", help="extra `taste train` options, e.g. --balanced")
    ap.add_argument("--gen-args", default="", help="extra `generate` options for every run (e.g. --steps 2)")
    ap.add_argument("--stage1-yaml", default="{}", help="JSON of config.yaml sections to override (tests)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bestshot_taste_cli"))
    ap.add_argument(
        "--user",
        choices=("oracle", "alternate"),
        default="oracle",
        help="oracle: deletes mismatches and disliked images; alternate: every second image (smoke tests "
        "on models whose images the oracle cannot read)",
    )
    args = ap.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")]
    gen_args, train_args = shlex.split(args.gen_args), shlex.split(args.train_args)
    t0 = time.perf_counter()
    test = free_prompts(args.test, seed=777)
    # the world's prompt space is finite: drop validation prompts that happen to be test prompts too
    val = [p for p in free_prompts(2 * args.val + 20, seed=4242) if p not in set(test)][: args.val]
    assert len(val) == args.val and not set(test) & set(val)
    base = run_prompts(args.work / "test", "base", args.model, test, args.n, None, gen_args)
    say(
        f"default scorer on {len(test)} test prompts: refused {100 * base['refused'].mean():.1f} %, disliked "
        f"{100 * base['disliked'].mean():.1f} %, full match {100 * base['match'].mean():.1f} % "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    val_base = (
        run_prompts(args.work / "val", "base", args.model, val, args.n, None, gen_args) if len(weights) > 1 else None
    )
    draws = []
    for r in range(args.draws):
        rng = random.Random(9000 + r)
        pool = free_prompts(3 * args.curate, seed=2026)
        curated = rng.sample(pool, args.curate)
        work = args.work / f"draw{r}"
        cur = curate(
            work / "curation",
            args.model,
            curated,
            args.per_prompt,
            10_000 * (r + 1),
            args.embedder,
            train_args,
            json.loads(args.stage1_yaml),
            args.user,
        )
        head = cur["head"]
        if val_base is not None:
            val_scores = {
                w: summary(
                    val_base,
                    run_prompts(work / "val", f"w{w:g}", args.model, val, args.n, f"clip+taste@{head}:{w:g}", gen_args),
                )
                for w in weights
            }
            w = choose_weight(val_scores, args.max_drop)
        else:
            val_scores, w = {}, weights[0]
        taste = run_prompts(work / "test", "taste", args.model, test, args.n, f"clip+taste@{head}:{w:g}", gen_args)
        s = summary(base, taste)
        draws.append({"curation": cur, "validation": val_scores, "weight": w, "test": s})
        say(
            f"draw {r}: kept {cur['kept']}, deleted {cur['deleted']} ({cur['disliked']} disliked); head CV accuracy "
            f"{cur['cv_accuracy']} vs always-delete {cur['always_delete']:.2f}; weight {w:g}: refused "
            f"{s['refused_taste_pct']:.1f} % (default {s['refused_base_pct']:.1f} %), disliked "
            f"{s['disliked_base_pct']:.1f} → {s['disliked_taste_pct']:.1f} % ({s['disliked_fall_pct']:+.0f} % fall), "
            f"full match {s['match_base_pct']:.1f} → {s['match_taste_pct']:.1f} % "
            f"({s['match_drop_points']:+.1f} points drop) ({time.perf_counter() - t0:.0f} s)"
        )
    mean = {k: float(np.mean([d["test"][k] for d in draws])) for k in draws[0]["test"]} if draws else {}
    met = bool(mean and mean["disliked_fall_pct"] >= 50 and mean["match_drop_points"] <= 2)
    say(
        f"mean over {len(draws)} draws: disliked fall {mean.get('disliked_fall_pct', 0):.0f} %, full-match drop "
        f"{mean.get('match_drop_points', 0):.1f} points, refused {mean.get('refused_taste_pct', 0):.1f} % vs "
        f"{mean.get('refused_base_pct', 0):.1f} % — target (≥ 50 % fall at ≤ 2 points) "
        f"{'met' if met else 'not met'}; "
        f"wall {time.perf_counter() - t0:.0f} s"
    )
    return {"base": base, "draws": draws, "mean": mean, "met": met}


if __name__ == "__main__":
    main()
