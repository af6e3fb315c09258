"""bench/taste_world.py runs tiny (rendered candidates, seconds) and its learnt head avoids an easy dislike."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench" / "taste_world.py"


def test_taste_world_tiny_prints_the_table_and_the_head_avoids_dark_backgrounds(capsys):
    bench = runpy.run_path(str(BENCH), run_name="taste_world")
    res = bench["main"](
        [
            "--source",
            "render",
            "--heldout",
            "16",
            "--train-prompts",
            "10",
            "--per-train",
            "4",
            "--n",
            "4",
            "--ks",
            "0,40",
            "--dislike",
            "dark",
            "--weight",
            "1",
            "--repeats",
            "1",
            "--boot",
            "200",
        ]
    )
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


def test_taste_through_the_cli_runs_the_users_commands(tmp_path, tiny_world):
    """bench/taste_cli.py on a tiny world model: stage1 → collect → delete → collect → train → generate with
    the gate, the weight chosen on validation prompts; the default scorer and clip+taste are refused on the same
    prompts (the ensemble's default gate is its clip term's)."""
    bench = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "taste_cli.py"), run_name="taste_cli")
    lines: list[str] = []
    res = bench["main"](
        [
            "--model",
            tiny_world,
            "--embedder",
            f"{tiny_world}/clip",
            "--curate",
            "6",
            "--test",
            "3",
            "--val",
            "2",
            "--n",
            "2",
            "--draws",
            "1",
            "--weights",
            "0.5,2",
            "--train-args=--balanced",
            "--gen-args=--steps 2 --size 16x16",
            "--stage1-yaml",
            '{"model": {"steps": 2}, "generation": {"base_width": 16, "base_height": 16}}',
            "--work",
            str(tmp_path),
            "--user",
            "alternate",
        ],
        say=lines.append,
    )
    (draw,) = res["draws"]
    cur = draw["curation"]
    assert (cur["kept"], cur["deleted"]) == (3, 3) and Path(cur["head"]).is_file()
    assert draw["weight"] in (0.5, 2.0) and set(draw["validation"]) == {0.5, 2.0}
    assert draw["test"]["refused_taste_pct"] == draw["test"]["refused_base_pct"]
    rows = [json.loads(x) for x in (tmp_path / "draw0" / "test" / "taste.results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["scorer"].startswith("clip+taste@") and "best_score" in r for r in rows)
    assert any("mean over 1 draws" in x for x in lines)
