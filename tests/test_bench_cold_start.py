"""bench/cold_start.py keeps working: one repetition, no timing assertion."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "cold_start.py"

# What the bench launches, stood in by a process that writes what `bestshot generate` leaves in its working
# folder (the kept PNG, the log line): the real command imports torch, diffusers and transformers (tens of
# seconds on a busy 2-core box), see the slow test below.
STAND_IN = """
import json, sys
from pathlib import Path
from PIL import Image
assert sys.argv[1:3] == ["generate", "a red circle above a blue square"], sys.argv
Path("images_out").mkdir()
Image.new("RGB", (32, 32), (200, 10, 10)).save("images_out/run_seed49.png")
rec = {"best_seed": 49, "img_path": "images_out/run_seed49.png",
       "timing_s": {"load": 0.5, "gen": 1.0, "clip": 0.1, "total": 1.7}}
Path("images_log.jsonl").write_text(json.dumps(rec) + "\\n")
"""


def _bench():
    spec = importlib.util.spec_from_file_location("cold_start_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cold_start_bench_one_rep(tmp_path, monkeypatch, capsys):
    bench = _bench()
    monkeypatch.setattr(bench, "LAUNCH", STAND_IN)
    out = tmp_path / "r.json"
    report = bench.main(["--reps", "1", "--warm-reps", "0", "--no-imports", "--json-out", str(out)])
    text = capsys.readouterr().out
    assert "| cold wall s |" in text and "| cold user+sys CPU s |" in text and "kept seed [49]" in text
    (run,) = report["cold"]
    assert run["rec"]["best_seed"] == 49 and run["wall"] > 0 and run["cpu"] >= 0
    assert run["startup"] == pytest.approx(run["wall"] - 1.7 + 0.5)
    saved = json.loads(out.read_text())
    assert saved["kept_seed"] == [49] and saved["kept_pixels"] == [run["hash"]] and len(run["hash"]) == 16


def test_cold_start_bench_reports_a_failing_command(monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "LAUNCH", "import sys; sys.exit('no model here')")
    with pytest.raises(SystemExit, match="no model here"):
        bench.main(["--reps", "1", "--warm-reps", "0", "--no-imports"])


def test_cold_start_import_stages_parse(monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "IMPORT_STAGES", (("json", "import json"), ("bestshot", "import bestshot")))
    stages = bench.measure_imports(dict(__import__("os").environ))
    assert [s[0] for s in stages] == ["json", "bestshot"] and all(s[1] >= 0 for s in stages)


@pytest.mark.slow
def test_cold_start_bench_real_command_one_rep(capsys):
    """The real README command, one cold run (fewer steps and candidates to stay short)."""
    bench = _bench()
    report = bench.main(["--reps", "1", "--warm-reps", "1", "--", "-n", "2", "--steps", "2"])
    assert report["cold"][0]["rec"]["settings"]["n_images"] == 2 and report["imports"]
    assert len(report["warm"]["warm"]) == 1
