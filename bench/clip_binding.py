"""Does a CLIP bind each object's shape to that object? Probed on rendered held-out scenes.

For every scene the full prompt is scored against the same prompt with one object's shape changed (each
object, each of the four other shapes). Reported per object count: how often the true prompt beats all four
edits of an object (``per object``, chance 20 %) and all edits of the scene (``whole scene``). The text side
of the shipped CLIP keeps such prompts apart (mean cosine to an edit ~0.91), so this measures the image side.

    python bench/clip_binding.py --clip embedded runs/embedded/clip_pairs --n 200
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F


def probe(clip: str, n: int, seed: int, objects: tuple[int, ...]) -> dict[int, tuple[float, float, float]]:
    from bestshot import world as W
    from bestshot.scoring import get_scorer

    scorer = get_scorer(clip, device="cpu", half=False)
    out = {}
    for k in objects:
        scenes = W.heldout_scenes(n, seed=seed, n_objects=k)
        per_obj, whole, tcos = [], [], []
        imgs = scorer.embed_images([W.render(sc, 32) for sc, _ in scenes]).cpu()
        for (sc, _), img in zip(scenes, imgs):
            prompts = [W.prompt_for(W.spec_of(sc))]
            for j, o in enumerate(sc.objects):
                for shape in W.SHAPES:
                    if shape != o.shape:
                        objs = list(sc.objects)
                        objs[j] = dataclasses.replace(o, shape=shape)
                        prompts.append(W.prompt_for(W.spec_of(dataclasses.replace(sc, objects=tuple(objs)))))
            t = F.normalize(scorer.embed_texts(prompts).cpu().float(), dim=-1)
            s = t @ img.float()
            tcos.append((t[1:] @ t[0]).mean().item())
            whole.append(bool((s[0] > s[1:]).all()))
            per_obj += [bool((s[0] > s[1 + 4 * j : 5 + 4 * j]).all()) for j in range(k)]
        out[k] = (sum(per_obj) / len(per_obj), sum(whole) / len(whole), sum(tcos) / len(tcos))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clip", nargs="+", help="'embedded' or CLIP folders")
    ap.add_argument("--n", type=int, default=200, help="scenes per object count")
    ap.add_argument("--seed", type=int, default=4242, help="held-out prompt seed (eval world uses 12345)")
    ap.add_argument("--objects", default="1,2,3")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    objects = tuple(int(x) for x in args.objects.split(","))
    print("| CLIP | objects | per object % | whole scene % | text cosine to an edit |\n|---|---|---|---|---|")
    for clip in args.clip:
        for k, (po, wh, tc) in probe(clip, args.n, args.seed, objects).items():
            print(f"| {clip} | {k} | {100 * po:.1f} | {100 * wh:.1f} | {tc:.3f} |", flush=True)


if __name__ == "__main__":
    main()
