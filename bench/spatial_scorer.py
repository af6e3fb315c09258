"""Tune and check the relation-aware scorer (``embedded+spatial``) on kept candidate sets.

A candidate set holds N images per prompt from the embedded model and the oracle's verdict on each
(``bestshot.train.candidates``). This re-ranks them with ``cosine + weight * agreement`` (the scorer
divides that by ``1 + weight``, which leaves the ranking as it is) for a grid of weights (and softmax
temperatures / agreement gains) and prints best-of-N full-match rates for the prompts that state a relation.
Tune on a set of *training* prompts, then check once on ``eval world``'s.

    # tune: the 360 training prompts of configs/embedded/clip_rank.yaml (none is in eval world's set)
    python bench/spatial_scorer.py runs/ranked/pool_train.safetensors --temperature 10,30 --gain 5,15
    # check: eval world's 200 two-object prompts
    #   (bestshot eval world --prompts 200 --steps 20 --cache runs/eval_cache20)
    python bench/spatial_scorer.py runs/eval_cache20/candidates_2_object.safetensors --weight 0,0.2
"""

from __future__ import annotations

import argparse
import itertools

import torch


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("candidates", help="a candidate set (.safetensors) written by build_candidates")
    ap.add_argument("--weight", type=floats, default=floats("0,0.02,0.05,0.1,0.2,0.5"))
    ap.add_argument("--temperature", type=floats, default=floats("10"))
    ap.add_argument("--gain", type=floats, default=floats("5"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clip", default="embedded", help="the CLIP that ranks: 'embedded' or a CLIP folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from bestshot.scoring import SpatialScorer, get_scorer
    from bestshot.scoring import spatial as S
    from bestshot.train.candidates import load_candidates

    cs = load_candidates(args.candidates)
    sp = SpatialScorer(get_scorer(args.clip, device="cpu"))
    rows = [(p, S.parse_relation(t)) for p, t in enumerate(cs.prompts)]
    rows = [(p, r) for p, r in rows if r is not None]
    if not rows:
        raise SystemExit(f"no prompt of {args.candidates} states a relation")
    K = cs.images.shape[1]
    cos, dense, phrases = [], [], []
    for p, rel in rows:  # one vision pass per prompt's candidates; texts embedded once
        pooled, d = sp.dense_images(cs.pil(p))
        cos.append(pooled @ sp.embed_texts([cs.prompts[p]])[0].cpu())
        dense.append(d)
        phrases.append(sp.embed_texts([rel.a, rel.b]).cpu())
    cos = torch.stack(cos)
    accepted = cs.verdicts[[p for p, _ in rows], :, 0]
    print(
        f"{args.candidates}: {len(rows)} prompts with a relation, {K} candidates each; "
        f"random pick {accepted.float().mean():.3f}, any of {K} {accepted.any(1).float().mean():.3f}"
    )
    print(f"| temperature | gain | weight | best of 4 | best of {K} |\n|---|---|---|---|---|")
    for temp, gain in itertools.product(args.temperature, args.gain):
        agree = torch.stack(
            [
                S.agreement(*S.centroids(d, ta, tb, temp), rel.relation, gain)
                for d, (ta, tb), (_, rel) in zip(dense, phrases, rows)
            ]
        )
        for w in args.weight:
            score = cos + w * agree
            best = {n: accepted.gather(1, score[:, :n].argmax(1, keepdim=True)).float().mean().item() for n in (4, K)}
            print(f"| {temp:g} | {gain:g} | {w:g} | {best[4]:.3f} | {best[K]:.3f} |")


if __name__ == "__main__":
    main()
