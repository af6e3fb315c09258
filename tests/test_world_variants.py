"""`bestshot eval world --variant`: the user's best-of-N run per variant on a tiny world model, judged by the oracle."""

import json
from pathlib import Path

import pytest

from bestshot.errors import BestshotError
from bestshot.evaluate.variants import parse_variant, parse_variants
from bestshot.evaluate.world_variants import VariantEvalConfig, evaluate_variants, row_path
from bestshot.evaluate.world_variants_report import wilson
from helpers import run_cli


def _cfg(model, out, variants, **kw):
    return VariantEvalConfig(
        variants=tuple(variants), model=model, n_prompts=2, groups=(2,), base=dict(steps_base=2), out=str(out), **kw
    )


@pytest.fixture(scope="module")
def two_variants(tiny_world, tmp_path_factory):
    """One run of two variants (defaults at n=1, n=2) on 2 two-object prompts, shared by the tests below."""
    out = tmp_path_factory.mktemp("variants")
    res = evaluate_variants(_cfg(tiny_world, out, ["one=n_images=1", "two=n=2"]), progress=False)
    return res, out


def test_variants_apply_their_settings_and_write_every_row(two_variants):
    res, out = two_variants
    assert res["complete"] and res["rows_done"] == 4
    for name, n in (("one", 1), ("two", 2)):
        for i in range(2):
            row = json.loads(row_path(out, name, 2, i).read_text())
            assert row["n_candidates"] == n and len(row["record"]["candidates"]) == n
            assert row["record"]["settings"]["n_images"] == n
            seeds = [c["seed"] for c in row["record"]["candidates"]]  # prompt i's seeds, the same in every variant
            assert seeds == [row["record"]["settings"]["seed_base"] + k for k in range(n)]
            # the run went through generate(): a kept image and its log line are in the variant's store
            kept = row["record"].get("img_path")
            assert not row["record"]["ok"] or Path(kept).parent == out / "world_variants" / "runs" / name
            assert not row["record"]["ok"] or Path(kept).is_file()
    for name in ("one", "two"):
        logged = (out / "world_variants/runs" / name / "log.jsonl").read_text().splitlines()
        assert len(logged) == 2
    one0 = json.loads(row_path(out, "one", 2, 0).read_text())["record"]["candidates"][0]["seed"]
    one1 = json.loads(row_path(out, "one", 2, 1).read_text())["record"]["candidates"][0]["seed"]
    assert one1 - one0 == 1000
    cell = res["groups"]["2_object"]["two"]
    assert cell["n"] == 2 and cell["candidates"] == 2 and cell["seconds_per_prompt"] > 0
    assert set(cell) >= {"match", "shape", "colour", "count", "position", "gated_out", "match_ci95", "time_ratio"}
    assert res["groups"]["2_object"]["one"]["time_ratio"] == 1.0
    saved = json.loads((out / "world_variants.json").read_text())
    assert saved["groups"] == res["groups"] and [v["name"] for v in saved["variants"]] == ["one", "two"]
    md = (out / "world_variants.md").read_text()
    assert "| 2 | one | `n_images=1` | 2 |" in md and "| 2 | two | `n=2` | 2 |" in md
    assert (out / "world_variants.png").stat().st_size > 0


def test_rerun_skips_finished_rows_and_redoes_changed_ones(two_variants, tiny_world, tmp_path, monkeypatch):
    import shutil

    from bestshot.evaluate import world_variants

    res, shared = two_variants
    out = shutil.copytree(shared, tmp_path / "copy")  # the shared run stays as it was for the other tests
    ran = []
    real = world_variants.run_one
    monkeypatch.setattr(
        world_variants, "run_one", lambda p, prompt, i: ran.append(p.variant.name) or real(p, prompt, i)
    )
    again = evaluate_variants(_cfg(tiny_world, out, ["one=n_images=1", "two=n=2"]), progress=False)
    assert ran == [] and again["groups"] == res["groups"]
    # the same name with other settings is another run: its rows are made again, the other variant's are kept
    evaluate_variants(_cfg(tiny_world, out, ["one=n_images=1", "two=n=3"]), progress=False)
    assert ran == ["two", "two"]
    assert json.loads(row_path(out, "two", 2, 0).read_text())["n_candidates"] == 3


def test_a_gated_out_run_counts_as_a_miss(tiny_world, tmp_path):
    res = evaluate_variants(_cfg(tiny_world, tmp_path, ["strict=n=2,score_min=1.0"]), progress=False)
    cell = res["groups"]["2_object"]["strict"]
    assert cell["gated_out"] == 100.0 and cell["match"] == 0.0 and cell["match_ci95"][0] == 0.0
    row = json.loads(row_path(tmp_path, "strict", 2, 0).read_text())
    assert row["ok"] is False and row["reason"] == "low_clip_alignment" and not any(row["verdict"].values())


def test_cancel_stops_between_runs_and_a_rerun_resumes(tiny_world, tmp_path):
    calls = []
    res = evaluate_variants(
        _cfg(tiny_world, tmp_path, ["a=n=1"]), progress=False, cancel=lambda: calls.append(1) or len(calls) > 1
    )
    assert not res["complete"] and res["rows_done"] == 1 and res["stopped"] == "cancelled"
    assert "Partial: 1 of 2 runs" in (tmp_path / "world_variants.md").read_text()
    report = evaluate_variants(_cfg(tiny_world, tmp_path, ["a=n=1"], time_limit_s=0), progress=False)
    assert report["rows_done"] == 1 and report["stopped"] == "time limit"  # runs nothing, reports what is done
    assert evaluate_variants(_cfg(tiny_world, tmp_path, ["a=n=1"]), progress=False)["complete"]


def test_variant_values_follow_the_field_types():
    v = parse_variant("mix=n=16,steps=3,guidance=2.5,exact_best=off,scheduler=none,loras=a,b")
    assert v.overrides == dict(
        n_images=16, steps_base=3, guidance=2.5, exact_best=False, scheduler=None, loras=("a", "b")
    )
    assert parse_variant("plain=").overrides == {}


@pytest.mark.parametrize(
    "text, words",
    [
        ("nosuch=frobnicate=3", ["nosuch", "unknown setting 'frobnicate'"]),
        ("typo=n_image=3", ["did you mean n_images"]),
        ("bad=n_images=many", ["bad", "n_images='many' is not a whole number"]),
        ("flag=gate=maybe", ["gate='maybe' is not true or false"]),
        ("noequals", ["must look like NAME=SETTINGS"]),
        ("x=out_dir=/tmp", ["unknown setting 'out_dir'"]),
        ("zero=n_images=0", ["--variant zero:", "n_images"]),  # ImgCfg.validate's own error
    ],
)
def test_bad_variants_are_one_line(text, words):
    from bestshot.config import ImgCfg

    with pytest.raises(BestshotError) as e:
        parse_variants([text], ImgCfg())
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_cli_variant_errors_are_one_line(tiny_world, tmp_path, capsys, monkeypatch):
    argv = ["eval", "world", "--model", tiny_world, "--out", str(tmp_path), "--variant", "a=n=1", "--variant"]
    code, _, err = run_cli([*argv, "b=n_images=x"], capsys, monkeypatch)
    assert code == 2 and "b: n_images='x' is not a whole number" in err and "Traceback" not in err
    code, _, err = run_cli([*argv, "a=n=2"], capsys, monkeypatch)
    assert code == 2 and "--variant a is given twice" in err
    code, _, err = run_cli([*argv[:-1], "--n", "1,4"], capsys, monkeypatch)
    assert code == 2 and "with --variant set n_images per variant" in err


def test_cli_runs_variants(tiny_world, tmp_path, capsys, monkeypatch):
    argv = ["eval", "world", "--model", tiny_world, "--out", str(tmp_path), "--prompts", "1", "--objects", "1"]
    code, out, err = run_cli([*argv, "--steps", "2", "--variant", "plain=", "--json"], capsys, monkeypatch)
    assert code == 0, err
    res = json.loads(out)
    assert res["complete"] and res["groups"]["1_object"]["plain"]["n"] == 1
    assert res["variants"][0]["steps"] == 2 and res["variants"][0]["settings"] == ""


def test_wilson_interval():
    assert wilson(0, 0) is None
    lo, hi = wilson(18, 20)
    assert lo == pytest.approx(69.9, abs=0.1) and hi == pytest.approx(97.2, abs=0.1)
    assert wilson(20, 20)[1] == 100.0 and wilson(0, 20)[0] == 0.0


def test_bench_composition_runs_the_documented_command(tiny_world, tmp_path, monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "composition.py"
    base = ["composition.py", "--model", tiny_world, "--prompts", "1", "--objects", "1", "--steps", "2"]
    argv = [*base, "--variants", "plain", "--variant", "two=n=2", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(bench), run_name="__main__")
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    assert "bestshot eval world --prompts 1 --objects 1" in out and "--variant plain= --variant two=n=2" in out
    assert "| Composition levers" in out and "1 object: plain" in out and "; two " in out
    monkeypatch.setattr(sys, "argv", [*base, "--variants", "plain", "--variant", "x=nosuch=1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(bench), run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "x: unknown setting 'nosuch'" in err
