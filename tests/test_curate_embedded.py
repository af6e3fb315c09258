"""The curation workflow on a tiny random BestshotWorldPipeline (the embedded model's class): stage 1
through the shared candidate maker, stages 2 and 3 by SDEdit on its own UNet / scheduler / CLIP."""

import numpy as np
import torch
from PIL import Image

from bestshot.curate import stages
from bestshot.curate.config import load_config
from bestshot.curate.workflow import Workflow
from test_curate_workflow import NAMES, write_config


def test_embedded_family_runs_every_stage(tmp_path, tiny_world):
    cfg = load_config(write_config(tmp_path, tiny_world))
    wf = Workflow(cfg, say=lambda m: None)
    wf.prompt_files.ensure()
    assert wf.family.name == "embedded"
    (tag,) = wf.run("run", count=1)
    meta = wf.layout.read_metadata(tag)
    assert meta["stages"]["stage2"]["img2img"] and meta["stages"]["stage3"]["tiles"] == 9
    import re

    for folder, pattern in NAMES.items():
        assert all(re.fullmatch(pattern, p.name) for p in (wf.layout.root / folder).iterdir())
    with Image.open(wf.layout.final(tag, 128, 128)) as im:
        assert im.size == (128, 128)


def test_sdedit_keeps_the_image_at_low_strength(tiny_world):
    from bestshot.models.loader import load_pipeline
    from bestshot.models.registry import resolve_model

    pipe = load_pipeline(tiny_world, memory="gpu")
    i2i = stages.img2img_pipeline(pipe, resolve_model(tiny_world).family)
    assert isinstance(i2i, stages.PixelSDEdit)
    img = Image.fromarray(np.tile(np.linspace(0, 255, 24, dtype=np.uint8)[None, :, None], (20, 1, 3)))

    def out(s):
        return np.asarray(
            i2i(
                "a red circle",
                image=img,
                strength=s,
                num_inference_steps=10,
                guidance_scale=2.0,
                generator=torch.Generator().manual_seed(0),
            ).images[0],
            dtype=float,
        )

    low, high = out(0.1), out(0.9)
    assert low.shape == high.shape == (20, 24, 3)  # odd sizes snap to the UNet's grid and come back
    base = np.asarray(img, dtype=float)
    assert np.abs(low - base).mean() < np.abs(high - base).mean()


def test_stage1_on_an_embedded_model_works_from_the_default_config(tmp_path, tiny_world, monkeypatch):
    """The shipped config.yaml is SDXL's (768x1344, 30 steps, guidance 7, UniPC); naming an embedded-kind model
    is enough: the settings still at those defaults become the model's own (its bestshot_defaults.json)."""
    import json
    import shutil

    import yaml

    from bestshot.curate.config import default_config_text
    from test_curate_workflow import cli

    model = tmp_path / "world"
    shutil.copytree(tiny_world, model)
    (model / "bestshot_defaults.json").write_text(
        json.dumps({"num_inference_steps": 2, "guidance_scale": 1.0, "width": 16, "height": 16, "scheduler": "ddim"})
    )
    cfg = yaml.safe_load(default_config_text())
    cfg["model"]["base"] = str(model)
    cfg["upscaler"]["backend"] = "lanczos"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    r = cli("stage1", "--once")
    assert r.exit_code == 0, r.output
    assert "768x1344 → 16x16" in r.output and "model.steps 30 → 2" in r.output
    (png,) = (tmp_path / "outputs" / "stage1").iterdir()
    with Image.open(png) as im:
        assert im.size == (16, 16)
    (meta,) = (tmp_path / "outputs" / "metadata").iterdir()
    st = json.loads(meta.read_text())["stages"]["stage1"]
    assert (st["steps"], st["guidance"]) == (2, 1.0)
    cfg["model"]["steps"] = 3  # a value the user set is kept
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = cli("stage1", "--once")
    assert r.exit_code == 0 and "model.steps" not in r.output
