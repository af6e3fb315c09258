"""The curation workflow on a tiny random SDXL base + refiner (refiner handoff in all three stages)."""

import pytest
from PIL import Image

from bestshot.curate.config import load_config
from bestshot.curate.workflow import Workflow
from test_curate_workflow import write_config


def test_sdxl_with_refiner_in_every_stage(tmp_path, tiny_sdxl, tiny_refiner):
    cfg = load_config(write_config(tmp_path, tiny_sdxl))
    cfg.model.refiner = tiny_refiner
    cfg.model.scheduler = "unipc"
    cfg.model.use_refiner = cfg.generation.stage2.use_refiner = cfg.generation.stage3.use_refiner = True
    cfg.generation.stage3.tile_size, cfg.generation.stage3.tile_overlap = 128, 0  # one tile: keep it quick
    said: list[str] = []
    wf = Workflow(cfg, say=said.append)
    wf.prompt_files.ensure()
    with pytest.warns(UserWarning, match="not an SDXL bucket"):
        (tag,) = wf.run("run", count=1)
    meta = wf.layout.read_metadata(tag)
    assert meta["models"]["family"] == "sdxl" and meta["models"]["refiner"] == tiny_refiner
    assert all(meta["stages"][s]["refiner"] for s in ("stage1", "stage2", "stage3"))
    assert meta["stages"]["stage3"]["tiles"] == 1
    with Image.open(wf.layout.final(tag, 128, 128)) as im:
        assert im.size == (128, 128) and "UniPC" in im.info["parameters"]
