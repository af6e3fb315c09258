"""Tune and check the region scorer (``embedded+regions``) on kept candidate sets.

A candidate set holds N images per prompt from the embedded model and the oracle's verdict on each
(``bestshot.train.candidates``). Every candidate is read once (its pooled cosine, and each of its regions
seen alone against each object phrase of its prompt, ``scoring.regions``); then the candidates are
re-ranked for a grid of weights, and best-of-N full-match rates are printed for prompts with and without a
relation. Tune on a set of *training* prompts, then check once on ``eval world``'s.

    # tune: the 360 training prompts of configs/embedded/clip_rank.yaml (none is in eval world's set)
    python bench/region_scorer.py runs/ranked/pool_train.safetensors
    # check: eval world's candidates (bestshot eval world --prompts 200 --steps 20 --cache runs/eval_cache20)
    python bench/region_scorer.py runs/eval_cache20/candidates_2_object.safetensors --w-obj 1 --w-rel 0.5 --count-penalty 0.1
"""

from __future__ import annotations

import argparse
import itertools

import torch


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="+", help="candidate sets (.safetensors) written by build_candidates")
    ap.add_argument("--w-obj", type=floats, default=floats("0,0.5,1,2,4"))
    ap.add_argument("--w-rel", type=floats, default=floats("0,0.25,0.5,1"))
    ap.add_argument("--count-penalty", type=floats, default=floats("0,0.05,0.1,0.2"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clip", default="embedded", help="the CLIP that ranks: 'embedded' or a CLIP folder")
    ap.add_argument("--top", type=int, default=12, help="rows of the grid to print (best first)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from bestshot.scoring import get_scorer
    from bestshot.scoring.regions import RegionScorer, parse_objects
    from bestshot.train.candidates import load_candidates

    base = get_scorer(args.clip, device="cpu")
    reader = RegionScorer(base)
    rows = []  # (has relation, accepted (K,), pooled cos (K,), [(sims, regions)] * K, prompt)
    for path in args.candidates:
        cs = load_candidates(path)
        for p, text in enumerate(cs.prompts):
            prompt = parse_objects(text)
            if prompt is None:
                continue
            read = reader.read(cs.pil(p), text, prompt)
            rows.append((prompt.relation is not None, cs.verdicts[p, :, 0], [c for c, _, _ in read],
                         [(sims, regs) for _, sims, regs in read], prompt))
    K = len(rows[0][1])
    groups = {"relation": [r for r in rows if r[0]], "no relation": [r for r in rows if not r[0]]}
    groups = {k: v for k, v in groups.items() if v}
    for name, g in groups.items():
        acc = torch.stack([r[1] for r in g]).float()
        print(f"{name}: {len(g)} prompts, {K} candidates each; random pick {acc.mean():.3f}, any of {K} {acc.any(1).float().mean():.3f}")

    def rate(g, n):
        n, hits = min(n, K), 0
        for _, acc, cos, parts, prompt in g:
            scores = [reader.combine(cos[k], sims, regs, prompt) for k, (sims, regs) in enumerate(parts[:n])]
            hits += bool(acc[max(range(n), key=scores.__getitem__)])
        return hits / len(g)

    results = []
    for w_obj, w_rel, pen in itertools.product(args.w_obj, args.w_rel, args.count_penalty):
        reader.w_obj, reader.w_rel, reader.count_penalty = w_obj, w_rel, pen
        results.append(((w_obj, w_rel, pen), {name: (rate(g, 4), rate(g, K)) for name, g in groups.items()}))
    key = "relation" if "relation" in groups else "no relation"
    results.sort(key=lambda r: r[1][key][1], reverse=True)
    head = " | ".join(f"{n} best of 4 | {n} best of {K}" for n in groups)
    print(f"\n| w_obj | w_rel | count penalty | {head} |\n|" + "---|" * (3 + 2 * len(groups)))
    for (w_obj, w_rel, pen), r in results[: args.top]:
        cells = " | ".join(f"{r[n][0]:.3f} | {r[n][1]:.3f}" for n in groups)
        print(f"| {w_obj:g} | {w_rel:g} | {pen:g} | {cells} |")
    base_row = [r for p, r in results if p[0] == 0 and p[1] == 0 and p[2] == 0]
    if base_row:
        print("pooled cosine alone (0, 0, 0): " + ", ".join(f"{n} {v[1]:.3f}" for n, v in base_row[0].items()))


if __name__ == "__main__":
    main()
