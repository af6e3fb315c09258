"""Hard-negative captions for the world: captions of the *same* scene with one attribute changed.

Why: best-of-N only helps if the scorer can tell "a red circle above a blue square" from "a blue circle
above a red square" or "... below ...". ``bestshot train clip`` shows each world image K such captions
(colours swapped, another colour or shape, relation flipped, an object dropped or added) as extra text
columns of its row; the generated-image pool (:mod:`bestshot.train.generated`) draws them the same way.
"""

from __future__ import annotations

import dataclasses
import random
import zlib


def _hard_negative_scenes(scene, rng: random.Random, n_shape: int = 1, every_object: bool = False):
    """Scenes that differ from ``scene`` in exactly one caption-visible attribute (candidates, shuffled).

    ``n_shape`` edits give one object other shapes: shapes are what a small CLIP learns last (at 32 px a
    short run told colours, sizes and backgrounds apart but collapsed triangle and diamond in the text
    tower), so more of them keeps the pressure on. ``every_object`` makes them for each object in turn."""
    from bestshot import world as W

    objs = list(scene.objects)
    out = []
    colours, shapes = list(W.COLOURS), list(W.SHAPES)
    if len(objs) >= 2:
        i, j = rng.sample(range(len(objs)), 2)
        a, b = objs[i], objs[j]
        if a.colour != b.colour:  # colour swap between objects
            o = objs[:]
            o[i], o[j] = dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour)
            out.append(dataclasses.replace(scene, objects=tuple(o)))
        if a.shape != b.shape:  # shape swap
            o = objs[:]
            o[i], o[j] = dataclasses.replace(a, shape=b.shape), dataclasses.replace(b, shape=a.shape)
            out.append(dataclasses.replace(scene, objects=tuple(o)))
    if scene.relation is not None:  # relation flipped
        out.append(dataclasses.replace(scene, relation=W.INVERSE[scene.relation]))
    k = rng.randrange(len(objs))
    o = objs[:]
    o[k] = dataclasses.replace(objs[k], colour=rng.choice([c for c in colours if c != objs[k].colour]))
    out.append(dataclasses.replace(scene, objects=tuple(o)))
    for j in range(len(objs)) if every_object else [k]:
        others = [s for s in shapes if s != objs[j].shape]
        # n_shape 1 keeps the single rng.choice draw, so stage-1 configs still make the same captions
        for shape in [rng.choice(others)] if n_shape <= 1 else rng.sample(others, min(n_shape, len(others))):
            o = objs[:]
            o[j] = dataclasses.replace(objs[j], shape=shape)
            out.append(dataclasses.replace(scene, objects=tuple(o)))
    if len(objs) >= 2:  # other count: drop one
        keep = objs[:k] + objs[k + 1 :]
        out.append(dataclasses.replace(scene, objects=tuple(keep), relation=None))
    if len(objs) <= 2:  # other count: add one
        extra = W.Obj(rng.choice(shapes), rng.choice(colours), rng.choice(list(W.SIZES)), 0.5, 0.5)
        rel = rng.choice(W.RELATIONS) if len(objs) == 1 else None
        out.append(dataclasses.replace(scene, objects=tuple(objs + [extra]), relation=rel))
    o = objs[:]
    o[k] = dataclasses.replace(objs[k], size=rng.choice([s for s in W.SIZES if s != objs[k].size]))
    out.append(dataclasses.replace(scene, objects=tuple(o)))
    out.append(dataclasses.replace(scene, background=rng.choice([b for b in W.BACKGROUNDS if b != scene.background])))
    rng.shuffle(out)
    # the relation/colour/shape edits are the ones best-of-N needs: put them first
    out.sort(
        key=lambda s: (
            0
            if (s.relation != scene.relation and len(s.objects) == len(objs))
            else (1 if len(s.objects) == len(objs) and s.background == scene.background else 2)
        )
    )
    return out


def hard_negative_captions(
    scene, rng: random.Random, k: int, n_shape: int = 1, every_object: bool = False
) -> tuple[str, list[str]]:
    """(positive caption, k captions of edited scenes) drawn with the same template as the positive."""
    from bestshot import world as W

    state = rng.getstate()
    pos = W.caption(scene, rng)
    negs: list[str] = []
    edit_rng = random.Random(zlib.crc32(f"{pos}|{k}".encode()))
    for s in _hard_negative_scenes(scene, edit_rng, n_shape, every_object):
        r = random.Random()
        r.setstate(state)
        c = W.caption(s, r)
        if c != pos and c not in negs:
            negs.append(c)
        if len(negs) == k:
            break
    while len(negs) < k:  # rare: pad with a random other scene's caption
        negs.append(W.caption(W.sample_scene(edit_rng), edit_rng))
    return pos, negs
