"""Command-line input that used to end in a traceback is one line naming the problem and the fix; the scorer
follows the model; eval's best of 1 needs no scorer; the original DDPM config's key names are accepted."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from bestshot.errors import BestshotError
from helpers import run_cli


def _one_error_line(code, out, err, needle):
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0], err
    assert "Traceback" not in err + out


# ---------------------------------------------------------------------------------------------- generate
def test_a_seed_past_64_bits_is_one_line(tmp_path, capsys, monkeypatch):
    r = run_cli(
        ["generate", "a red circle", "--seed", "1180591620717411303424", "--out", str(tmp_path / "o")],
        capsys,
        monkeypatch,
    )
    _one_error_line(*r, "give a smaller --seed")
    r = run_cli(
        ["generate", "a", "--seed", str(2**63 - 2), "-n", "4", "--out", str(tmp_path / "o")], capsys, monkeypatch
    )
    _one_error_line(*r, "seed_base")  # seed + 3 passes 2**63 - 1 too
    assert not (tmp_path / "o").exists()


def test_folders_given_for_files_are_named(tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    (tmp_path / "res").mkdir()
    r = run_cli(["generate", "--prompts-file", str(prompts), "--results", str(tmp_path / "res")], capsys, monkeypatch)
    _one_error_line(*r, f"--results {tmp_path / 'res'} is a folder")
    r = run_cli(["generate", "a red circle", "--log", str(tmp_path / "res")], capsys, monkeypatch)
    _one_error_line(*r, f"--log {tmp_path / 'res'} is a folder")
    r = run_cli(["generate", "--prompts-file", str(tmp_path / "res")], capsys, monkeypatch)
    _one_error_line(*r, "--prompts-file")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["generate", "a red circle", "--strength", "2"], "'--strength'"),
        (["generate", "a red circle", "--no-such-flag"], "--no-such-flag"),
        (["generate", "a red circle", "--steps", "many"], "'--steps'"),
        (["eval", "world", "--prompts", "x"], "'--prompts'"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_usage_errors_are_one_line_naming_the_help(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(argv, capsys, monkeypatch)
    _one_error_line(code, out, err, needle)
    assert "--help'" in err and "╭" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_bare_group_still_prints_its_help(capsys, monkeypatch):
    code, out, err = run_cli(["eval"], capsys, monkeypatch)
    assert code == 2 and "world" in out + err and "error:" not in err


@pytest.mark.parametrize("spec", ["embedded+taste:nan", "taste:inf", "embedded+regions:-Infinity"])
def test_a_non_finite_scorer_weight_blames_the_weight(spec, tmp_path, capsys, monkeypatch):
    r = run_cli(["generate", "a red circle", "--scorer", spec, "--out", str(tmp_path / "o")], capsys, monkeypatch)
    _one_error_line(*r, "is not a finite number")


def test_train_embed_refuses_an_open_clip_in_one_line(tmp_path, capsys, monkeypatch):
    r = run_cli(
        [
            "train",
            "embed",
            "--clip",
            "open_clip:ViT-B-32:openai",
            "--out",
            str(tmp_path / "c.safetensors"),
            "--length",
            "4",
        ],
        capsys,
        monkeypatch,
    )
    _one_error_line(*r, "open_clip CLIPs are not supported")
    r = run_cli(
        ["train", "embed", "--clip", str(tmp_path / "nope"), "--out", str(tmp_path / "c.safetensors"), "--length", "4"],
        capsys,
        monkeypatch,
    )
    _one_error_line(*r, "is not a CLIP folder")


# ---------------------------------------------------------------------------------------------- scorer per model
def _world_model(tmp_path, **defaults):
    from bestshot.models.registry import EMBEDDED_DIR, resolve_model

    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    base = json.loads((EMBEDDED_DIR / "bestshot_defaults.json").read_text())
    (folder / "bestshot_defaults.json").write_text(json.dumps({**base, **defaults}))
    return dataclasses.replace(resolve_model(str(EMBEDDED_DIR)), source=str(folder))


def test_the_default_scorer_follows_the_model(tmp_path):
    from bestshot.models.registry import EMBEDDED_DIR, default_scorer, resolve_model

    shipped = resolve_model(str(EMBEDDED_DIR))
    assert default_scorer(shipped) == shipped.family.default_scorer == "embedded+regions"  # the shapes world
    assert default_scorer(_world_model(tmp_path / "a", conditioning="image_embed")) == "embedded"
    assert default_scorer(_world_model(tmp_path / "b", dataset="fashion-mnist")) == "embedded"
    assert default_scorer(_world_model(tmp_path / "c", dataset="world:1-2")) == "embedded+regions"
    assert (
        default_scorer(_world_model(tmp_path / "d", conditioning="image_embed", scorer="embedded+spatial"))
        == "embedded+spatial"
    )


def test_eval_generate_best_of_1_loads_no_scorer(tmp_path, capsys, monkeypatch):
    from PIL import Image

    import bestshot.evaluate.batch as B

    def offline(*a, **k):
        raise BestshotError("no scorer may load for best of 1")

    monkeypatch.setattr(B, "pipeline_scorer", offline)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (16, 16), "red").save(folder / "a.png")
    (folder / "a.txt").write_text("a red circle")
    from bestshot.evaluate.manifest import build_folder_manifest

    manifest = build_folder_manifest(folder, tmp_path / "m.csv")
    out = tmp_path / "gen"
    code, _, err = run_cli(
        ["eval", "generate", str(manifest), "--out", str(out), "--steps", "2", "--best-of", "1", "--num", "1"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    meta = json.loads((out / "000000.json").read_text())
    assert meta["scorer"] is None and meta["clip"] is None and (out / "000000.png").is_file()


# ---------------------------------------------------------------------------------------------- interrogate
def test_interrogate_shows_what_the_captioner_said(tmp_path, capsys, monkeypatch):
    """With the embedded CLIP (world domain) the caption is one candidate: it is printed, and a caption that
    is not a world prompt is said to have been no candidate."""
    import bestshot.interrogate.captioner as cap
    from bestshot import world as W

    class Says:
        def __init__(self, text):
            self.text = text

        def caption(self, images):
            return [self.text] * len(images)

    img = tmp_path / "a.png"
    import random

    W.render(W.sample_scene(random.Random(0)), 32).save(img)
    for text, note in [("a red circle", "CLIP kept it for"), ("an oil painting of a harbour", "not world prompts")]:
        monkeypatch.setattr(cap, "load_caption_model", lambda *a, _t=text, **k: Says(_t))
        code, out, err = run_cli(
            [
                "interrogate",
                str(img),
                "--captioner",
                "stand-in",
                "--mode",
                "fast",
                "--cache-dir",
                str(tmp_path / "cache"),
            ],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        assert f"(caption: {text})" in out and note in err


# ---------------------------------------------------------------------------------------------- DDPM config
def test_ddpm_config_takes_the_original_key_names(tmp_path):
    from bestshot.train.ddpm import load_ddpm_config

    p = tmp_path / "ddpm.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "img_channels": 1,
                "down_channels": [32, 64],
                "attention_levels": [False, True],
                "learning_rate": 0.001,
                "clip_model": "my/clip",
                "img_size": 28,
            }
        )
    )
    cfg = load_ddpm_config(p, steps=5)
    assert (cfg.channels, cfg.block_out_channels, cfg.lr, cfg.clip, cfg.steps) == (1, (32, 64), 0.001, "my/clip", 5)
    p.write_text(yaml.safe_dump({"learning_rate": 0.001, "lr": 0.002}))
    with pytest.raises(BestshotError, match="sets both learning_rate and lr"):
        load_ddpm_config(p)
    p.write_text(yaml.safe_dump({"learnin_rate": 0.001}))
    with pytest.raises(BestshotError, match="unknown training setting"):
        load_ddpm_config(p)
