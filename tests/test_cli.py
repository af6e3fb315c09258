"""The CLI: bad input gives one clear error line and a non-zero exit, never a traceback."""

import json
import subprocess
import sys

import pytest

from helpers import run_cli


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["generate", ""], "prompt is empty"),
        (["generate", "a cat", "--size", "1001x1024"], "multiple of 8"),
        (["generate", "a cat", "--size", "big"], "WIDTHxHEIGHT"),
        (["generate", "a cat", "--preset", "nope"], "unknown preset 'nope'"),
        (["generate", "a cat", "--model", "./no/such/model"], "does not exist"),
        (["generate", "a cat", "-n", "0"], "n_images must be"),
        (["generate", "a cat", "--clip-min", "1.5"], "clip_min"),
        (["generate", "a cat", "--scorer", "embedded", "--clip-min", "-2"], "clip_min"),  # a cosine scorer
        (["generate", "a cat", "--scorer", "embedded", "--score-min", "1.2"], "outside the range [-1, 1]"),
        (["generate", "--text-file", "/no/such/article.txt"], "does not exist"),
        (["generate", "a cat", "--scheduler", "warp"], "unknown scheduler"),
        (["generate", "a cat", "--memory", "lots"], "memory must be"),
        (["generate"], "exactly one of"),
    ],
)
def test_bad_input_one_line_error(argv, needle, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and needle in err.replace("\n", " ")
    assert "Traceback" not in err + out


def test_unreadable_text_file(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "article.txt"
    bad.write_bytes(b"\xff\xfe\x00bad utf8 \xc3\x28")
    code, _, err = run_cli(["generate", "--text-file", str(bad)], capsys, monkeypatch)
    assert code == 2 and "cannot read text file" in err and "Traceback" not in err


def test_yaml_config_unknown_key(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("n_images: 2\nsteps: 3\n")
    code, _, err = run_cli(["generate", "a cat", "--config", str(cfg)], capsys, monkeypatch)
    assert code == 2 and "unknown generation setting(s) steps" in err


def test_generate_json_and_batch_resume(tiny_sd15, tiny_clip, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [
        "--model",
        tiny_sd15,
        "--scorer",
        tiny_clip,
        "-n",
        "2",
        "--steps",
        "2",
        "--size",
        "64x64",
        "--clip-min",
        "-1",
    ]
    code, out, err = run_cli(["generate", "a red fox", *common, "--json"], capsys, monkeypatch)
    assert code == 0, err
    r = json.loads(out)
    assert r["ok"] and (tmp_path / r["img_path"]).exists() and len(r["candidates"]) == 2

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\n# a comment\na dog\n")
    code, out, err = run_cli(["generate", "--prompts-file", str(prompts), *common, "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert [json.loads(ln)["line"] for ln in out.strip().splitlines()] == [1, 4]
    results = tmp_path / "prompts.txt.results.jsonl"
    assert len(results.read_text().splitlines()) == 2
    # interrupted batch (killed while making the last prompt: neither its log line nor its result exist):
    # run again → only that prompt is redone
    log = tmp_path / "images_log.jsonl"
    results.write_text(results.read_text().splitlines()[0] + "\n")
    log.write_text("".join(ln + "\n" for ln in log.read_text().splitlines()[:-1]))
    code, out, err = run_cli(["generate", "--prompts-file", str(prompts), *common, "--json"], capsys, monkeypatch)
    assert [json.loads(ln)["line"] for ln in out.strip().splitlines()] == [4]
    assert "skipped 1" in err


def test_low_clip_exits_1(tiny_sd15, tiny_clip, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(
        [
            "generate",
            "a cat",
            "--model",
            tiny_sd15,
            "--scorer",
            tiny_clip,
            "-n",
            "1",
            "--steps",
            "1",
            "--size",
            "64x64",
            "--clip-min",
            "0.999",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 1 and "low_clip_alignment" in out


def test_real_process_prints_no_traceback(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "bestshot.cli", "generate", "a cat", "--size", "100x100"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: width 100")
    assert "Traceback" not in p.stderr
