"""The taste curve on the embedded world: does a head learnt from K curated images avoid a hidden dislike?

A simulated user has a dislike that prompts never state (``dark``: objects on a black background;
``small``: any object the oracle reads as small). Prompts here state neither background nor sizes, so the
model draws both freely. The user curates K stage-1 images: an image is kept when the world's oracle says it
matches its prompt and it shows nothing disliked, deleted otherwise (:mod:`bestshot.world.oracle` reads
background and sizes back from the pixels). The taste head (:func:`bestshot.scoring.taste.train_head`,
logistic, on the embedded CLIP's image embeddings) learns those K verdicts; then on held-out prompts the
ensemble ``clip + taste:W`` (:class:`bestshot.scoring.ensemble.EnsembleScorer` arithmetic: each term on its
own saved scale) picks one of N candidates. Reported per K: the rate of disliked picks and the oracle's full
match rate, with 95 % bootstrap intervals over held-out prompts. K = 0 has no verdicts, so no head: it is
CLIP alone by construction.

    python bench/taste_world.py [--heldout 150] [--train-prompts 25] [--per-train 4] [--n 8]
                                [--ks 0,20,50,100] [--weight 0.5,1,2] [--dislike dark,small]

What this measures is the head's signal, not the documented command: the ensemble's first term here is the
plain embedded CLIP (``embedded``), while ``clip`` in ``clip+taste:0.5`` is the model's default scorer
(``embedded+regions``), and no quality gate is applied. ``bench/taste_cli.py`` runs the users' commands.

``--cache FILE.npz`` keeps the generated images (written as they are made), so a second run only
re-curates and re-picks. ``--source render`` draws candidates with the world's renderer instead of the
model (seconds; what tests/test_taste_world.py runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DISLIKES = ("dark", "small")
DARK = ("black",)


# ------------------------------------------------------------------------------------------ prompts
def free_prompts(n: int, seed: int, n_objects: int | None = None) -> list[str]:
    """``n`` world prompts that state no background and no size (what the hidden dislike is about)."""
    from bestshot.world import heldout_prompts
    from bestshot.world.captions import parse_prompt

    out: list[str] = []
    pool = 4 * n + 20
    while len(out) < n:
        out = []
        for p in heldout_prompts(pool, seed=seed, n_objects=n_objects):
            spec = parse_prompt(p)
            if spec is not None and spec.background is None and all(o.size is None for o in spec.objects):
                out.append(p)
            if len(out) == n:
                break
        pool *= 2
    return out


# ------------------------------------------------------------------------------------------ candidates
def model_candidates(n: int, steps: int | None, threads: int) -> tuple[Callable[[str, int], list], Any]:
    """(make(prompt, seed_base) -> n images of the embedded model, its own CLIP scorer)."""
    import torch

    torch.set_num_threads(threads)
    from bestshot.generation import make_candidates, seeds_for
    from bestshot.models.loader import load_pipeline
    from bestshot.models.settings import resolve_config
    from bestshot.scoring import scorer_from_pipeline

    cfg = resolve_config(None, n_images=n, clip_min=-1.0, **({"steps_base": steps} if steps else {}))
    pipe = load_pipeline("embedded")

    def make(prompt: str, seed_base: int) -> list:
        return make_candidates(pipe, None, prompt, "", seeds_for(seed_base, n), cfg)

    return make, scorer_from_pipeline(pipe)


def render_candidates(n: int) -> tuple[Callable[[str, int], list], Any]:
    """Candidates drawn by the world's renderer: the prompt's objects with a random background and random
    sizes, a quarter of them with one object's colour wrong (so the oracle has mismatches to find)."""
    from bestshot.world.captions import parse_prompt
    from bestshot.world.render import render
    from bestshot.world.scenes import sample_scene
    from bestshot.world.vocabulary import BACKGROUNDS, COLOURS

    def make(prompt: str, seed_base: int) -> list:
        spec = parse_prompt(prompt)
        rng = random.Random(f"{prompt}|{seed_base}")
        out = []
        while len(out) < n:
            scene = sample_scene(rng, n_objects=len(spec.objects))
            objs = [
                dataclasses.replace(o, shape=s.shape, colour=s.colour or o.colour)
                for o, s in zip(scene.objects, spec.objects)
            ]
            if spec.relation is not None:
                from bestshot.world.oracle import relation_holds

                if not relation_holds(objs[0], objs[1], spec.relation):
                    continue
            if rng.random() < 0.25:
                objs[0] = dataclasses.replace(objs[0], colour=rng.choice([c for c in COLOURS if c != objs[0].colour]))
            bg = rng.choice(list(BACKGROUNDS))
            if any(o.colour == bg for o in objs):
                continue
            out.append(render(dataclasses.replace(scene, objects=tuple(objs), background=bg), 32))
        return out

    return make, None


def _save(path: Path, data: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)


def images_for(
    prompts: Sequence[str],
    make: Callable[[str, int], list],
    seed_base: int,
    cache: Path | None,
    key: str,
    say: Callable[[str], None],
) -> np.ndarray:
    """(len(prompts), n, H, W, 3) uint8; with ``cache``, the images made so far are kept there."""
    done: list[np.ndarray] = []
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if f"{key}_prompts" in z and list(z[f"{key}_prompts"]) == list(prompts[: len(z[f"{key}_prompts"])]):
                done = list(z[f"{key}_images"])
    t0 = time.perf_counter()
    for i in range(len(done), len(prompts)):
        done.append(np.stack([np.asarray(im.convert("RGB")) for im in make(prompts[i], seed_base + 1000 * i)]))
        if cache is not None and (i % 10 == 9 or i == len(prompts) - 1):
            data = {}
            if cache.is_file():
                with np.load(cache, allow_pickle=False) as z:
                    data = {k: z[k] for k in z.files}
            data[f"{key}_prompts"] = np.array(prompts[: i + 1], dtype=str)
            data[f"{key}_images"] = np.stack(done)
            _save(cache, data)
            say(f"{key}: {i + 1}/{len(prompts)} prompts ({time.perf_counter() - t0:.0f} s)")
    return np.stack(done)


# ------------------------------------------------------------------------------------------ judging
def judge(images: np.ndarray, prompts: Sequence[str], clip: Any, dislikes: Sequence[str]) -> dict[str, np.ndarray]:
    """Per candidate: CLIP cosine, CLIP image embedding, oracle full match, and each dislike (from the pixels)."""
    from PIL import Image

    from bestshot.world.captions import parse_prompt
    from bestshot.world.oracle import _judge, analyse

    P, n = images.shape[:2]
    out = {
        "clip": np.zeros((P, n)),
        "match": np.zeros((P, n), bool),
        **{f"dislike_{d}": np.zeros((P, n), bool) for d in dislikes},
    }
    embs = []
    for i, p in enumerate(prompts):
        ims = [Image.fromarray(a) for a in images[i]]
        out["clip"][i] = clip.score(ims, p)
        embs.append(clip.embed_images(ims).float().cpu().numpy())
        spec = parse_prompt(p)
        for j, im in enumerate(ims):
            an = analyse(im)  # what the oracle reads: background and objects, with their sizes
            out["match"][i, j] = _judge(spec, an).match
            if "dark" in dislikes:
                out["dislike_dark"][i, j] = an.background in DARK
            if "small" in dislikes:
                out["dislike_small"][i, j] = any(b.size == "small" for b in an.blobs)
    out["emb"] = np.stack(embs)
    return out


def bootstrap(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-prompt values and its 95 % percentile bootstrap interval (prompts resampled)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    means = values[idx].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def taste_curve(
    train: dict[str, np.ndarray],
    train_prompts: Sequence[str],
    held: dict[str, np.ndarray],
    clip_scale: Any,
    dislike: str,
    ks: Sequence[int],
    weight: float,
    repeats: int,
    seed: int = 0,
) -> dict[Any, dict[str, np.ndarray]]:
    """method → per-prompt picked (disliked, match), averaged over ``repeats`` orders of the curated images."""
    from bestshot.scoring.ensemble import Scale, combine
    from bestshot.scoring.taste import Dataset, train_head

    T, m = train["clip"].shape
    flat_x = train["emb"].reshape(T * m, -1)
    keep = (train["match"] & ~train[f"dislike_{dislike}"]).reshape(-1)
    flat_p = [p for p in train_prompts for _ in range(m)]
    P = held["clip"].shape[0]
    rows = np.arange(P)

    def pick(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        best = scores.argmax(axis=1)
        return held[f"dislike_{dislike}"][rows, best].astype(float), held["match"][rows, best].astype(float)

    out: dict[Any, dict[str, np.ndarray]] = {}
    d0, m0 = pick(held["clip"])
    out["clip"] = {"disliked": d0, "match": m0, "heads": 1, "deleted": 0.0}
    for k in ks:
        dis, mat, heads, deleted = np.zeros(P), np.zeros(P), 0, 0.0
        for r in range(repeats):
            order = np.random.default_rng(seed + r).permutation(T * m)[:k]
            y = keep[order].astype(np.float32)
            deleted += float((y == 0).sum()) / repeats
            if k == 0 or y.min() == y.max():
                d, mt = d0, m0  # no verdicts (or only one kind): no head, CLIP alone
            else:
                ds = Dataset(flat_x[order], y, np.ones(k, np.float32), [flat_p[i] for i in order])
                head = train_head(ds, kind="logistic", embedder="embedded", folds=0)
                logits = (held["emb"] @ head.w + head.b).astype(np.float64)
                ts = Scale(head.info["logit_mean"], head.info["logit_std"], "taste head")
                scores = np.stack(
                    [combine([c, z], [clip_scale, ts], [1.0, weight]) for c, z in zip(held["clip"], logits)]
                )
                d, mt = pick(scores)
                heads += 1
            dis += d / repeats
            mat += mt / repeats
        out[k] = {"disliked": dis, "match": mat, "heads": heads, "deleted": deleted}
    return out


def table(curve: dict[Any, dict[str, Any]], dislike: str, weight: float, repeats: int, reps: int = 2000) -> str:
    lines = [
        f"dislike `{dislike}`, ensemble clip + taste:{weight:g}, {len(curve['clip']['match'])} held-out prompts, "
        f"{repeats} draw(s) of the K curated images",
        "| method | disliked picks % [95 % CI] | oracle full match % [95 % CI] | heads trained | deleted of K |",
        "|---|---|---|---|---|",
    ]
    for key, r in curve.items():
        d, dlo, dhi = bootstrap(r["disliked"], reps)
        mt, mlo, mhi = bootstrap(r["match"], reps)
        name, heads, deleted = (
            ("CLIP alone", "–", "–") if key == "clip" else (f"K = {key}", r["heads"], f"{r['deleted']:.1f}")
        )
        lines.append(
            f"| {name} | {100 * d:.1f} [{100 * dlo:.1f}, {100 * dhi:.1f}] | "
            f"{100 * mt:.1f} [{100 * mlo:.1f}, {100 * mhi:.1f}] | {heads} | {deleted} |"
        )
    return "\n".join(lines)


def target(curve: dict[Any, dict[str, Any]], k: int = 50) -> dict[str, float] | None:
    """The issue's target at K: disliked picks fall >= 50 % and full match drops <= 2 points."""
    if k not in curve:
        return None
    base_d, base_m = curve["clip"]["disliked"].mean(), curve["clip"]["match"].mean()
    d, mt = curve[k]["disliked"].mean(), curve[k]["match"].mean()
    fall = 1 - d / base_d if base_d > 0 else 0.0
    return {
        "disliked_fall": float(fall),
        "match_drop_points": float(100 * (base_m - mt)),
        "met": bool(fall >= 0.5 and 100 * (base_m - mt) <= 2),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heldout", type=int, default=150)
    ap.add_argument("--train-prompts", type=int, default=25)
    ap.add_argument("--per-train", type=int, default=4, help="stage-1 images per curated prompt")
    ap.add_argument("--n", type=int, default=8, help="candidates per held-out prompt")
    ap.add_argument("--ks", default="0,20,50,100")
    ap.add_argument("--weight", default="0.5,1,2", help="taste weight(s), comma-separated")
    ap.add_argument("--dislike", default="dark,small")
    ap.add_argument("--repeats", type=int, default=5, help="draws of the K curated images (results averaged)")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--source", choices=("model", "render"), default="model")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args(argv)
    dislikes = [d for d in args.dislike.split(",") if d]
    if any(d not in DISLIKES for d in dislikes):
        ap.error(f"--dislike: one of {', '.join(DISLIKES)}")
    ks = [int(k) for k in args.ks.split(",")]
    if max(ks) > args.train_prompts * args.per_train:
        ap.error("the largest K needs --train-prompts x --per-train >= K")

    t0 = time.perf_counter()
    say = lambda m: print(m, flush=True)  # noqa: E731
    train_prompts = free_prompts(args.train_prompts, seed=2026)
    held_prompts = free_prompts(args.heldout, seed=777)
    if args.source == "model":
        make_n, clip = model_candidates(args.n, args.steps, args.threads)
        make_m, _ = model_candidates(args.per_train, args.steps, args.threads)
    else:
        from bestshot.scoring import get_scorer

        make_n, _ = render_candidates(args.n)
        make_m, _ = render_candidates(args.per_train)
        clip = get_scorer("embedded")
    tr_images = images_for(train_prompts, make_m, 0, args.cache, "train", say)
    held_images = images_for(held_prompts, make_n, 500000, args.cache, "heldout", say)
    t_gen = time.perf_counter() - t0
    train = judge(tr_images, train_prompts, clip, dislikes)
    held = judge(held_images, held_prompts, clip, dislikes)
    from bestshot.scoring.ensemble import scale_of

    clip_scale = scale_of(clip)
    result: dict[str, Any] = {"tables": [], "targets": {}, "clip_scale": clip_scale}
    print(
        f"source {args.source}; curated pool {args.train_prompts} prompts x {args.per_train}; held-out "
        f"{args.heldout} prompts x {args.n} candidates; CLIP scale {clip_scale}"
    )
    for d in dislikes:
        print(
            f"dislike {d}: {100 * train[f'dislike_{d}'].mean():.1f} % of curated images, "
            f"{100 * held[f'dislike_{d}'].mean():.1f} % of held-out candidates"
        )
        for w in (float(x) for x in args.weight.split(",")):
            curve = taste_curve(train, train_prompts, held, clip_scale, d, ks, w, args.repeats)
            t = table(curve, d, w, args.repeats, args.boot)
            tg = target(curve)
            print()
            print(t)
            if tg is not None:
                print(
                    f"target at K=50 (disliked picks fall >= 50 %, full match drops <= 2 points): "
                    f"fall {100 * tg['disliked_fall']:.0f} %, drop {tg['match_drop_points']:.1f} points — "
                    f"{'met' if tg['met'] else 'not met'}"
                )
            result["tables"].append(t)
            result["targets"][(d, w)] = tg
            result[(d, w)] = curve
    print(f"\nwall {time.perf_counter() - t0:.0f} s (generation {t_gen:.0f} s)")
    return result


if __name__ == "__main__":
    main()
