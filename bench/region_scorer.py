"""Tune and check the region scorer (``embedded+regions``) on kept candidate sets.

A candidate set holds N images per prompt from the embedded model and the oracle's verdict on each
(``bestshot.train.candidates``). Every candidate is read once (its pooled cosine, and each of its regions
seen alone against each object phrase of its prompt, ``scoring.regions``); then the candidates are
re-ranked for a grid of weights, and best-of-N full-match rates are printed for prompts with and without a
relation. Tune on a set of *training* prompts, then check once on ``eval world``'s.

    # tune: the 360 training prompts of configs/embedded/clip_rank.yaml (none is in eval world's set)
    python bench/region_scorer.py runs/ranked/pool_train.safetensors
    # check: eval world's candidates (bestshot eval world --prompts 200 --steps 20 --cache runs/eval_cache20)
    python bench/region_scorer.py runs/eval_cache20/candidates_2_object.safetensors --w-obj 4 --w-rel 0.5 \
        --count-penalty 0.1 --w-nouns 0.05 --temperature 100

``--w-nouns`` and ``--temperature`` grid the zero-shot noun term (each matched region's log-probability of
its phrase's shape against the world's other shapes); the region reads are made once per temperature.
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
    ap.add_argument("--w-nouns", type=floats, default=floats("0"), help="weights of the noun term (0: off)")
    ap.add_argument("--temperature", type=floats, default=floats("100"), help="softmax temperatures of the noun term")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clip", default="embedded", help="the CLIP that ranks: 'embedded' or a CLIP folder")
    ap.add_argument("--top", type=int, default=12, help="rows of the grid to print (best first)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from bestshot.scoring import get_scorer
    from bestshot.scoring.regions import RegionScorer, parse_objects, world_nouns
    from bestshot.train.candidates import load_candidates

    base = get_scorer(args.clip, device="cpu")
    reader = RegionScorer(base, nouns=world_nouns() if any(args.w_nouns) else ())
    rows = []  # (has relation, accepted (K,), pooled cos (K,), [{temperature: (sims, regions, logp)}] * K, prompt)
    sets = [load_candidates(path) for path in args.candidates]
    for cs in sets:
        for p, text in enumerate(cs.prompts):
            prompt = parse_objects(text)
            if prompt is None:
                continue
            reads = {}
            for temp in args.temperature:
                reader.temperature = temp
                reads[temp] = reader.read(cs.pil(p), text, prompt)
            first = reads[args.temperature[0]]
            rows.append(
                (
                    prompt.relation is not None,
                    cs.verdicts[p, :, 0],
                    [c for c, *_ in first],
                    [{t: r[k][1:] for t, r in reads.items()} for k in range(len(first))],
                    prompt,
                )
            )
    K = len(rows[0][1])
    groups = {"relation": [r for r in rows if r[0]], "no relation": [r for r in rows if not r[0]]}
    groups = {k: v for k, v in groups.items() if v}
    for name, g in groups.items():
        acc = torch.stack([r[1] for r in g]).float()
        any_k = acc.any(1).float().mean()
        print(f"{name}: {len(g)} prompts, {K} candidates each; random pick {acc.mean():.3f}, any of {K} {any_k:.3f}")

    def rate(g, n, temp):
        n, hits = min(n, K), 0
        for _, acc, cos, parts, prompt in g:
            scores = []
            for k, part in enumerate(parts[:n]):
                sims, regs, logp = part[temp]
                scores.append(reader.combine(cos[k], sims, regs, prompt, logp))
            hits += bool(acc[max(range(n), key=scores.__getitem__)])
        return hits / len(g)

    results = []
    for w_obj, w_rel, pen, w_n, temp in itertools.product(
        args.w_obj, args.w_rel, args.count_penalty, args.w_nouns, args.temperature
    ):
        reader.w_obj, reader.w_rel, reader.count_penalty, reader.w_nouns = w_obj, w_rel, pen, w_n
        results.append(
            ((w_obj, w_rel, pen, w_n, temp), {name: (rate(g, 4, temp), rate(g, K, temp)) for name, g in groups.items()})
        )
    key = "relation" if "relation" in groups else "no relation"
    results.sort(key=lambda r: r[1][key][1], reverse=True)
    head = " | ".join(f"{n} best of 4 | {n} best of {K}" for n in groups)
    print(f"\n| w_obj | w_rel | count penalty | w_nouns | temperature | {head} |\n|" + "---|" * (5 + 2 * len(groups)))
    for (w_obj, w_rel, pen, w_n, temp), r in results[: args.top]:
        cells = " | ".join(f"{r[n][0]:.3f} | {r[n][1]:.3f}" for n in groups)
        print(f"| {w_obj:g} | {w_rel:g} | {pen:g} | {w_n:g} | {temp:g} | {cells} |")
    base_row = [r for p, r in results if p[0] == 0 and p[1] == 0 and p[2] == 0 and p[3] == 0]
    if base_row:
        print("pooled cosine alone (0, 0, 0): " + ", ".join(f"{n} {v[1]:.3f}" for n, v in base_row[0].items()))


if __name__ == "__main__":
    main()
