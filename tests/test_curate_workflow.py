"""The curation workflow end to end on a tiny random SD1.5 (real diffusers classes, real loader).

32x32 base → 64x64 (stage 2) → 128x128 (stage 3, 64 px tiles, 16 px overlap), 2 steps everywhere.
"""

import re
import signal
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from bestshot.curate import stages
from bestshot.curate.cli import _Stop
from bestshot.curate.config import default_config_text, load_config
from bestshot.curate.workflow import Workflow

NAMES = {
    "stage1": r"\d{8}_\d{6}(_\d+)?_stage1_32x32\.png",
    "metadata": r"\d{8}_\d{6}(_\d+)?\.json",
    "final": r"\d{8}_\d{6}(_\d+)?_final_128x128\.png",
    "intermediates/stage2_up": r"\d{8}_\d{6}(_\d+)?_stage2_up_64x64\.png",
    "intermediates/stage2": r"\d{8}_\d{6}(_\d+)?_stage2_64x64\.png",
    "intermediates/stage3_up": r"\d{8}_\d{6}(_\d+)?_stage3_up_128x128\.png",
    "intermediates/tiles": r"\d{8}_\d{6}(_\d+)?_tile_\d{3}\.png",
}


def write_config(folder: Path, model: str, backend: str = "lanczos", **gen) -> Path:
    """The shipped default config with a tiny model, tiny sizes and 2 steps."""
    cfg = yaml.safe_load(default_config_text())
    cfg["model"].update(base=model, steps=2, scheduler="ddim")
    g = cfg["generation"]
    g.update(base_width=32, base_height=32, seed=5, **gen)
    g["stage2"]["steps"] = 2
    g["stage3"].update(steps=2, tile_size=64, tile_overlap=16)
    cfg["upscaler"].update(backend=backend, model="realesr-animevideov3-x4")
    cfg["memory"]["strategy"] = "gpu"
    p = folder / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def cli(*args):
    from bestshot.cli import app

    return CliRunner().invoke(app, list(args))


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_fresh_config_is_written_and_named(tmp_path, monkeypatch):
    from bestshot.errors import BestshotError

    def offline(self):  # the default model (the SDXL hub id) cannot be loaded offline
        raise BestshotError("could not load the SDXL base — download it first")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Workflow, "pipe", offline)
    r = cli("stage1", "--once")
    assert (tmp_path / "config.yaml").read_text() == default_config_text()
    assert "wrote the default config" in r.output
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output
    assert (tmp_path / "manual_prompt.txt").is_file() and (tmp_path / "prompt_options.txt").is_file()
    r = cli("upscale", "--config", "nope.yaml")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_full_run_once_makes_every_folder_and_name(tmp_path, tiny_sd15):
    cfg_path = write_config(tmp_path, tiny_sd15, backend="ncnn")
    r = cli("run", "--once", "--config", str(cfg_path))
    assert r.exit_code == 0, r.output
    out = tmp_path / "outputs"
    for folder, pattern in NAMES.items():
        files = [p.name for p in (out / folder).iterdir()]
        assert files and all(re.fullmatch(pattern, f) for f in files), (folder, files)
    assert len(list((out / "intermediates/tiles").iterdir())) == 9  # 128 px, 64 px tiles, stride 48 → 3x3
    (meta_path,) = (out / "metadata").iterdir()
    meta = yaml.safe_load(meta_path.read_text())
    tag = meta_path.stem
    assert meta["tag"] == tag and meta["seed"] == 5 and meta["prompt"] and meta["negative"]
    assert set(meta["versions"]) >= {"torch", "diffusers", "transformers", "bestshot"}
    assert meta["models"]["base"] == tiny_sd15 and meta["settings"]["generation"]["stage3"]["tile_size"] == 64
    assert meta["stages"]["stage2"]["strength"] == 0.25 and meta["stages"]["stage2"]["img2img"]
    s3 = meta["stages"]["stage3"]
    assert s3["tiles"] == 9 and s3["upscaler"] in ("ncnn", "lanczos") and s3["blend_mode"] == "cosine"
    final = out / "final" / f"{tag}_final_128x128.png"
    with Image.open(final) as im:
        assert im.size == (128, 128) and tag in im.info["parameters"]
    assert no_temp_files(out)


def test_curation_upscales_only_survivors_once(tmp_path, tiny_sd15):
    cfg_path = write_config(tmp_path, tiny_sd15, max_prompt_options=2)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["generation"]["stage3"]["enabled"] = False  # ESRGAN only: this test is about which images go through
    cfg["generation"]["save_intermediates"] = False
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert cli("stage1", "--count", "3", "--config", str(cfg_path)).exit_code == 0
    out = tmp_path / "outputs"
    stage1 = sorted((out / "stage1").iterdir())
    assert len(stage1) == 3 and not list((out / "final").iterdir())
    stage1[1].unlink()  # the curator deletes the one they do not like
    r = cli("upscale", "--config", str(cfg_path))
    assert r.exit_code == 0, r.output
    finals = {p.name.split("_final_")[0] for p in (out / "final").iterdir()}
    assert finals == {p.name.split("_stage1_")[0] for p in (stage1[0], stage1[2])}
    assert not [p for p in (out / "intermediates").rglob("*") if p.is_file()]  # intermediates off
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    r = cli("upscale", "--config", str(cfg_path))
    assert r.exit_code == 0 and "nothing to upscale" in r.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes


def test_killed_upscale_resumes_without_partial_files(tmp_path, tiny_sd15, monkeypatch):
    cfg = load_config(write_config(tmp_path, tiny_sd15))
    cfg.generation.stage3.enabled = False  # keep it fast: the kill happens in the stage 3 upscale
    wf = Workflow(cfg, say=lambda m: None)
    wf.prompt_files.ensure()
    wf.run("stage1", count=3)
    real = stages.esrgan_upscale
    calls = {"n": 0}

    def dies_on_second_image(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process is killed in the middle of stage 3
        return real(*a, **k)

    monkeypatch.setattr(stages, "esrgan_upscale", dies_on_second_image)
    with pytest.raises(KeyboardInterrupt):
        wf.run("upscale")
    out = tmp_path / "outputs"
    assert len(list((out / "final").iterdir())) == 1
    assert no_temp_files(out)
    for p in out.rglob("*.png"):
        with Image.open(p) as im:
            im.verify()  # every file on disk is whole
    second = wf.pending()[0][0]
    assert "stage2" in wf.layout.read_metadata(second)["stages"]  # recorded before the kill

    monkeypatch.setattr(stages, "esrgan_upscale", real)
    said: list[str] = []
    wf2 = Workflow(cfg, say=said.append)
    done = wf2.run("upscale")
    assert len(done) == 2 and done[0] == second
    assert any("reusing" in s and second in s for s in said)  # stage 2 of the killed image is not redone
    assert len(list((out / "final").iterdir())) == 3 and wf2.pending() == []
    assert no_temp_files(out)


def test_stop_flag_finishes_current_image_and_second_ctrl_c_aborts(tmp_path, tiny_sd15):
    cfg = load_config(write_config(tmp_path, tiny_sd15))
    cfg.generation.stage2.enabled = False
    cfg.generation.stage3.enabled = False
    stop = _Stop()
    said: list[str] = []

    def say(msg):
        said.append(msg)
        if msg.startswith("stage1"):
            stop.handler(signal.SIGINT, None)  # Ctrl-C while the first image is being made

    wf = Workflow(cfg, say=say, stop_requested=stop)
    wf.prompt_files.ensure()
    assert len(wf.run("run", count=None)) == 1  # continuous mode stopped after the current image
    assert len(list((tmp_path / "outputs/final").iterdir())) == 1
    with pytest.raises(KeyboardInterrupt):
        stop.handler(signal.SIGINT, None)


def test_model_without_img2img_upscales_only(monkeypatch):
    class Family:
        img2img_class = None

    class TextOnly:
        def __call__(self, prompt, num_inference_steps=10, generator=None):
            pass

    class WithImage:
        def __call__(self, prompt, image=None, strength=0.5, generator=None):
            pass

    assert stages.img2img_pipeline(TextOnly(), Family()) is None
    p = WithImage()
    assert stages.img2img_pipeline(p, Family()) is p


def test_unavailable_esrgan_falls_back_to_lanczos_with_warning(tmp_path):
    with pytest.warns(UserWarning, match="Lanczos"):
        up = stages.make_upscaler("torch", "realesrgan-x4plus", tmp_path / "missing.pth", 512, 32, None)
    img = Image.new("RGB", (10, 6), (200, 10, 10))
    out = stages.esrgan_upscale(up, img, (30, 18))
    assert up.name == "lanczos" and out.size == (30, 18)
