"""The GPU benchmark keeps working on CPU (tiny configs), so CI notices when it breaks."""

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_generate.py"


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_gpu_bench_runs_tiny_on_cpu(family, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_generate.py", "--family", family, "--tiny", "--n", "2",
                                      "--workdir", str(tmp_path)])
    runpy.run_path(str(BENCH), run_name="__main__")
    out = capsys.readouterr().out
    assert "| bestshot generate |" in out and "ms/step" in out and "VAE decode" in out


def test_clip_towers_train_side_by_side_and_reassemble(tmp_path, monkeypatch):
    """bench/clip_towers.py (the GPU comparison of image towers) runs tiny on CPU; what it exports rebuilds
    the same CLIP, text tower untouched."""
    import torch
    from transformers import CLIPModel

    from bestshot.train.clip_train import ClipTrainConfig, train_clip

    tiny = dict(img_size=16, patch_size=4, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                text_layers=1, text_heads=2, projection_dim=16, max_length=32)
    train_clip(ClipTrainConfig(**tiny, batch_size=8, steps=1, hard_negatives=2, eval_size=8, out_dir=str(tmp_path / "t")))
    cfg = tmp_path / "towers.yaml"
    cfg.write_text(f"img_size: 16\nhard_negatives: 2\nbatch_size: 8\nsteps: 3\neval_size: 8\nlog_every: 1\n"
                   f"init_text_from: {tmp_path / 't'}\nfreeze_text: true\nout_dir: {tmp_path / 'runs'}\n")
    script = Path(__file__).resolve().parents[1] / "bench" / "clip_towers.py"
    monkeypatch.setattr(sys, "argv", ["clip_towers.py", "--config", str(cfg), "--tower", "a:4:32:1:2",
                                      "--tower", "b:2:16:2:2", "--export", str(tmp_path / "out")])
    runpy.run_path(str(script), run_name="__main__")
    report = json.loads((tmp_path / "out" / "towers_metrics.json").read_text())
    assert set(report) == {"a", "b"} and all(m["steps"] == 3 for m in report.values())
    monkeypatch.setattr(sys, "argv", ["clip_towers.py", "assemble", str(tmp_path / "out" / "b.vision.safetensors"),
                                      "--out", str(tmp_path / "b")])
    runpy.run_path(str(script), run_name="__main__")
    rebuilt, trained = CLIPModel.from_pretrained(tmp_path / "b"), CLIPModel.from_pretrained(tmp_path / "runs" / "b")
    text = CLIPModel.from_pretrained(tmp_path / "t")
    assert rebuilt.config.vision_config.patch_size == 2
    assert torch.allclose(rebuilt.visual_projection.weight, trained.visual_projection.weight, atol=1e-3)  # fp16 export
    assert torch.equal(rebuilt.text_projection.weight, text.text_projection.weight)
