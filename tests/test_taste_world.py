"""bench/taste_world.py runs tiny (rendered candidates, seconds) and its learnt head avoids an easy dislike."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench" / "taste_world.py"


def test_taste_world_tiny_prints_the_table_and_the_head_avoids_dark_backgrounds(capsys):
    bench = runpy.run_path(str(BENCH), run_name="taste_world")
    res = bench["main"](["--source", "render", "--heldout", "16", "--train-prompts", "10", "--per-train", "4",
                         "--n", "4", "--ks", "0,40", "--dislike", "dark", "--weight", "1", "--repeats", "1",
                         "--boot", "200"])
    out = capsys.readouterr().out
    assert "| method | disliked picks % [95 % CI] | oracle full match % [95 % CI]" in out
    assert "| CLIP alone |" in out and "| K = 0 |" in out and "| K = 40 |" in out and "16 held-out prompts" in out
    curve = res[("dark", 1.0)]
    clip, k0, k40 = curve["clip"], curve[0], curve[40]
    assert np.array_equal(k0["disliked"], clip["disliked"])  # no verdicts: no head, CLIP alone
    assert k40["heads"] == 1 and 0 < k40["deleted"] < 40
    # black backgrounds are easy to see in a CLIP embedding: 40 verdicts must cut the disliked picks
    assert clip["disliked"].mean() > 0
    assert k40["disliked"].mean() <= 0.5 * clip["disliked"].mean()
    assert res["targets"][("dark", 1.0)] is None  # K=50 was not run
