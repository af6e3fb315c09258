"""The quality gate in the scorer's units, and the score names (score_min / best_score / scorer, with the
old clip_min / best_clip names reading the same values)."""

from dataclasses import replace

import numpy as np
import pytest

from bestshot.config import ImgCfg
from bestshot.errors import BestshotError
from bestshot.generation import generate
from bestshot.scoring import CLIPScorer, EnsembleScorer, resolve_gate
from bestshot.scoring.ensemble import Scale

SMALL = dict(steps_base=2, height=64, width=64, style_suffix="", negative_prompt="")


class Brightness:
    """A stand-in preference term: likes bright images (its units: mean pixel value, 0..1)."""

    name = "brightness"
    units, score_range, default_min = "brightness", (0.0, 1.0), None
    scale = Scale(0.5, 0.1, "given")

    def truncate(self, text):
        return text, False

    def score(self, images, text):
        return [float(np.asarray(im, dtype=np.float64).mean() / 255.0) for im in images]


class Fixed:
    """A scorer with given scores and declared units."""

    def __init__(self, units="cosine", rng=(-1.0, 1.0), default=0.3, name="fixed"):
        self.units, self.score_range, self.default_min, self.name = units, rng, default, name

    def score(self, images, text):
        return [0.5] * len(images)


def test_clip_min_is_an_alias_of_score_min():
    c = ImgCfg(clip_min=1.2)  # no longer refused as a cosine: the scorer's range decides (at generate time)
    assert c.validate().score_min == 1.2 and c.clip_min == 1.2
    assert replace(c, steps_base=3).score_min == 1.2
    assert replace(c, clip_min=-1.0).score_min == -1.0
    assert replace(c, score_min=0.5).clip_min == 0.5 and replace(c, score_min=None).clip_min is None
    assert ImgCfg.from_dict({"clip_min": 0.3}).score_min == 0.3
    assert ImgCfg.from_dict({"score_min": 0.3, "clip_min": 0.3}).score_min == 0.3
    with pytest.raises(BestshotError, match="disagree"):
        ImgCfg.from_dict({"score_min": 0.3, "clip_min": 0.4})
    assert ImgCfg().score_min is None  # the scorer's own default


def test_gate_is_validated_in_the_scorers_units():
    cosine = Fixed()
    with pytest.raises(BestshotError, match=r"outside the range \[-1, 1\] of scorer 'fixed' \(cosine\)"):
        resolve_gate(cosine, 1.2)
    assert resolve_gate(cosine, None).minimum == 0.3 and resolve_gate(cosine, 0.9).source == "score_min"
    ens = EnsembleScorer([cosine, Brightness()], [1.0, 0.5], name="fixed:1+brightness:0.5")
    g = resolve_gate(ens, 1.2)  # an ensemble's sum of standardised scores has no cosine range
    assert g.minimum == 1.2 and g.judge is None and "standardised" in g.units
    d = resolve_gate(ens, None)  # default: the first term's default, judged on the first term's score
    assert (d.minimum, d.on, d.judge) == (0.3, "fixed", cosine)
    assert resolve_gate(ens, None, enabled=False).minimum is None
    assert resolve_gate(Brightness(), None).minimum is None  # a preference term has no default gate


def _clip(tiny_clip, default_min):
    s = CLIPScorer.from_pretrained(tiny_clip, name="tiny-clip")  # a fresh object: the cached one stays untouched
    s.default_min = default_min
    return s


def test_ensemble_is_refused_exactly_when_its_clip_term_is(tiny_sd15, tiny_clip, tmp_path):
    """``clip+taste`` with the default gate: never refused more often than the clip term alone, never keeps a
    candidate the clip term refuses; and the record's names say what they hold."""
    prompts = ["a cat", "a red circle", "two dogs", "a blue square on grass"]
    clip = _clip(tiny_clip, None)
    kw = dict(model=tiny_sd15, n_images=3, **SMALL)

    def out(tag):
        return dict(out_dir=str(tmp_path / tag), log_jsonl=str(tmp_path / f"{tag}.jsonl"))

    plain = [generate(p, scorer=clip, score_min=-1.0, **kw, **out("p")) for p in prompts]
    # a default gate in the middle of the best scores: some runs pass, some do not
    best = sorted(r["best_score"] for r in plain)
    clip.default_min = (best[1] + best[2]) / 2
    ens = EnsembleScorer([clip, Brightness()], [1.0, 0.5], name="tiny-clip:1+brightness:0.5")
    runs = [(generate(p, scorer=clip, **kw, **out("c")), generate(p, scorer=ens, **kw, **out("e"))) for p in prompts]
    assert sum(not c["ok"] for c, _ in runs) == 2
    for c, e in runs:
        assert e["ok"] == c["ok"]  # refused exactly when the clip term refuses
        assert e["gate"]["on"] == "tiny-clip" and e["gate"]["min"] == pytest.approx(clip.default_min)
        if e["ok"]:
            assert e["gate"]["value"] >= clip.default_min
        assert e["scorer"] == ens.name and e["best_clip"] == e["best_score"] and e["best_clip_score"] is None
        assert e["score_min"] == pytest.approx(clip.default_min)
        assert all(x["score"] == x["clip"] for x in e["candidates"])
        assert c["best_clip"] == c["best_score"] and c["best_clip_score"] is not None  # a cosine: CLIPScore scale
    # an explicit gate is in the ensemble's units: far above any cosine, and it gates the sum
    hi = generate(prompts[0], scorer=ens, score_min=50.0, **kw, **out("h"))
    assert hi["ok"] is False and hi["score_min"] == 50.0 and hi["gate"]["source"] == "score_min"
    with pytest.raises(BestshotError, match="outside the range"):
        generate(prompts[0], scorer=clip, clip_min=1.2, **kw, **out("x"))


def test_a1111_gate_is_in_the_scorers_units():
    from types import SimpleNamespace

    from bestshot.server.a1111 import FieldError, check_gate_range, gate_info, requested_min

    assert requested_min(SimpleNamespace(score_min=None, clip_min=0.3)) == 0.3  # the old field name
    assert requested_min(SimpleNamespace(score_min=1.5, clip_min=None)) == 1.5
    with pytest.raises(FieldError):
        requested_min(SimpleNamespace(score_min=0.2, clip_min=0.3))
    check_gate_range(1.2, "clip+taste:0.5", "embedded")  # an ensemble: the weighted sum, no cosine range
    check_gate_range(-3.0, None, "embedded")  # embedded+regions: no lower bound
    for scorer in ("embedded", None):  # a cosine; the regions score is at most 1
        with pytest.raises(FieldError, match="outside the range"):
            check_gate_range(1.2, scorer, "embedded")
    with pytest.raises(FieldError, match=r"outside the range \[-1, 1\]"):
        check_gate_range(1.2, Fixed(), "embedded")
    info = gate_info([{"seed": 1, "score": 1.5}, {"seed": 2, "score": 0.9}], 1.2, "clip+taste:0.5")["gate"]
    assert info["failed_seeds"] == [2] and info["score_min"] == info["clip_min"] == 1.2
    assert info["scorer"] == "clip+taste:0.5"
