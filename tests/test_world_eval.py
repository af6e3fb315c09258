"""`bestshot eval world` on a tiny random world pipeline, and the quality-gate table."""

import json

import pytest

from bestshot.evaluate.world_eval import WorldEvalConfig, evaluate_world, gate_table
from helpers import run_cli


def test_gate_table_separates_matches_from_mismatches():
    rows = [(0.9, True), (0.8, True), (0.7, True), (0.3, False), (0.2, False), (0.75, False)]
    g = gate_table(rows)
    assert g["n"] == 6 and g["matches"] == 3
    assert g["suggested_clip_min"] == pytest.approx(0.7)  # keeps all matches, rejects 2 of 3 mismatches
    first, last = g["table"][0], g["table"][-1]
    assert first["matches_kept_pct"] == 100.0 and first["mismatches_rejected_pct"] == 0.0
    assert last["clip_min"] == 0.9 and last["matches_kept_pct"] == pytest.approx(100 / 3, abs=0.1)
    assert gate_table([])["suggested_clip_min"] is None


def test_gate_table_without_mismatches_writes_strict_json():
    """Every pick a match (single objects): no mismatch rate to give. null in JSON, "–" in the table; NaN,
    which json.dumps writes by default, is not JSON and breaks strict readers."""
    from bestshot.evaluate.world_eval import dumps, to_markdown

    g = gate_table([(0.7, True), (0.8, True)])
    assert g["suggested_clip_min"] == pytest.approx(0.7)
    assert all(r["mismatches_rejected_pct"] is None and r["matches_kept_pct"] is not None for r in g["table"])
    results = {
        "model": "m",
        "scorer": "s",
        "n_prompts": 2,
        "prompt_seed": 1,
        "steps": 2,
        "guidance": 1.0,
        "size": [32, 32],
        "ns": [2],
        "groups": {},
        "quality_gate": g,
    }
    json.loads(dumps(results), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert "| 0.700 | 100.0 | – |" in to_markdown(results)


def test_evaluate_world_on_a_tiny_model(tiny_world, tmp_path):
    res = evaluate_world(
        WorldEvalConfig(model=tiny_world, n_prompts=2, ns=(1, 2), steps=2, out=str(tmp_path)), progress=False
    )
    assert set(res["groups"]) == {"1_object", "2_object"}
    for group in res["groups"].values():
        assert set(group) == {"random_pick", "best_of_1", "best_of_2"}
        for rates in group.values():
            assert set(rates) == {"match", "shape", "colour", "count", "position"}
            assert all(0.0 <= v <= 100.0 for v in rates.values())
    assert res["quality_gate"]["n"] == 4
    for gname, group in res["groups"].items():  # a perfect ranker does at least as well as the scorer
        ceiling = res["ceiling"][gname]
        assert set(ceiling) == {"any_of_2"}
        assert ceiling["any_of_2"]["match"] >= group["best_of_2"]["match"]
    saved = json.loads((tmp_path / "world_eval.json").read_text())
    assert saved["groups"] == res["groups"]
    assert "| 1 object | best of 2 |" in (tmp_path / "world_eval.md").read_text()


def test_eval_world_cli_rejects_bad_n(tiny_world, capsys, monkeypatch):
    code, _, err = run_cli(["eval", "world", "--model", tiny_world, "--n", "0"], capsys, monkeypatch)
    assert code != 0 and "--n values must be >= 1" in err
