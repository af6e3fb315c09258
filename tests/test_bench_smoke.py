"""The GPU benchmark keeps working on CPU (tiny configs), so CI notices when it breaks."""

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_generate.py"


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_gpu_bench_runs_tiny_on_cpu(family, tmp_path, monkeypatch, capsys, request, tiny_clip):
    # the session's tiny models (the bench's own --tiny build, made once) where the bench looks for them, and
    # 32 px: the tiny SD3's VAE does not downsample, so its 64 px default is 4096 tokens of attention per step
    (tmp_path / f"{family}_tiny").symlink_to(request.getfixturevalue(f"tiny_{family}"), target_is_directory=True)
    (tmp_path / "clip_tiny").symlink_to(tiny_clip, target_is_directory=True)
    monkeypatch.setattr(
        sys,
        "argv",
        ["gpu_generate.py", "--family", family, "--tiny", "--n", "2", "--size", "32", "--workdir", str(tmp_path)],
    )
    runpy.run_path(str(BENCH), run_name="__main__")
    out = capsys.readouterr().out
    assert "| bestshot generate |" in out and "ms/step" in out and "VAE decode" in out


def test_clip_towers_train_side_by_side_and_reassemble(tmp_path, monkeypatch):
    """bench/clip_towers.py (the GPU comparison of image towers) runs tiny on CPU; what it exports rebuilds
    the same CLIP, text tower untouched."""
    import torch
    from transformers import CLIPModel

    from bestshot.train.clip_train import ClipTrainConfig, train_clip

    tiny = dict(
        img_size=16,
        patch_size=4,
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        projection_dim=16,
        max_length=32,
    )
    train_clip(
        ClipTrainConfig(**tiny, batch_size=8, steps=1, hard_negatives=2, eval_size=8, out_dir=str(tmp_path / "t"))
    )
    cfg = tmp_path / "towers.yaml"
    cfg.write_text(
        f"img_size: 16\nhard_negatives: 2\nbatch_size: 8\nsteps: 3\neval_size: 8\nlog_every: 1\n"
        f"init_text_from: {tmp_path / 't'}\nfreeze_text: true\nout_dir: {tmp_path / 'runs'}\n"
    )
    script = Path(__file__).resolve().parents[1] / "bench" / "clip_towers.py"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "clip_towers.py",
            "--config",
            str(cfg),
            "--tower",
            "a:4:32:1:2",
            "--tower",
            "b:2:16:2:2",
            "--export",
            str(tmp_path / "out"),
        ],
    )
    runpy.run_path(str(script), run_name="__main__")
    report = json.loads((tmp_path / "out" / "towers_metrics.json").read_text())
    assert set(report) == {"a", "b"} and all(m["steps"] == 3 for m in report.values())
    monkeypatch.setattr(
        sys,
        "argv",
        ["clip_towers.py", "assemble", str(tmp_path / "out" / "b.vision.safetensors"), "--out", str(tmp_path / "b")],
    )
    runpy.run_path(str(script), run_name="__main__")
    rebuilt, trained = CLIPModel.from_pretrained(tmp_path / "b"), CLIPModel.from_pretrained(tmp_path / "runs" / "b")
    text = CLIPModel.from_pretrained(tmp_path / "t")
    assert rebuilt.config.vision_config.patch_size == 2
    assert torch.allclose(rebuilt.visual_projection.weight, trained.visual_projection.weight, atol=1e-3)  # fp16 export
    assert torch.equal(rebuilt.text_projection.weight, text.text_projection.weight)


def test_region_scorer_bench_ranks_a_candidate_set(tmp_path, monkeypatch, capsys):
    """bench/region_scorer.py reads a candidate set (here: renders of the true scene and of its mirror image
    per prompt, with the oracle's verdicts) and prints its grid. With an exact colour stand-in for the CLIP,
    the pooled score cannot tell the two apart and the relation term always can."""
    import numpy as np
    import torch

    import bestshot.scoring
    from bestshot import world as W
    from bestshot.train.candidates import ATTRS, CandidateSet, _save
    from bestshot.world.oracle import oracle
    from helpers import ColourCLIP

    prompts, images, verdicts = [], [], []
    scenes = [
        sc for sc, _ in W.heldout_scenes(20, seed=3, n_objects=2) if sc.objects[0].colour != sc.objects[1].colour
    ][:4]
    for sc in scenes:
        mirror = W.Scene(
            tuple(W.Obj(o.shape, o.colour, o.size, 1 - o.cx, 1 - o.cy) for o in sc.objects), sc.background, sc.relation
        )
        prompt = W.prompt_for(W.spec_of(sc))
        ims = [W.render(mirror, 32), W.render(sc, 32)]
        prompts.append(prompt)
        images.append(torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in ims]))
        verdicts.append(torch.tensor([[bool(getattr(oracle(im, prompt), a)) for a in ATTRS] for im in ims]))
    path = tmp_path / "cands.safetensors"
    _save(path, CandidateSet(prompts, torch.stack(images), torch.stack(verdicts), {"smoke": 1}))
    monkeypatch.setattr(bestshot.scoring, "get_scorer", lambda spec, device=None: ColourCLIP())
    script = Path(__file__).resolve().parents[1] / "bench" / "region_scorer.py"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "region_scorer.py",
            str(path),
            "--threads",
            "1",
            "--w-obj",
            "0,4",
            "--w-rel",
            "0,0.5",
            "--count-penalty",
            "0.1",
            "--w-nouns",
            "0,0.05",
        ],
    )
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "relation: 4 prompts, 2 candidates each; random pick 0.500, any of 2 1.000" in out
    rows = {
        tuple(c.strip() for c in line.split("|")[1:5]): line.split("|")[7].strip()
        for line in out.splitlines()
        if line.startswith("| ") and line.split("|")[1].strip()[0].isdigit()
    }
    assert len(rows) == 8, out  # 2 x 2 x 1 x 2 weights, one temperature
    # the stand-in sees no shapes: the noun term is the same for both candidates and changes nothing
    assert rows[("0", "0.5", "0.1", "0")] == rows[("4", "0.5", "0.1", "0")] == "1.000", out
    assert rows[("4", "0.5", "0.1", "0.05")] == "1.000", out


def test_spatial_guidance_bench_compares_settings(tiny_world, monkeypatch, capsys):
    """bench/spatial_guidance.py draws each setting's candidates (tiny model: what it prints is noise, that
    it runs and reports each setting is what CI checks) and refuses a malformed setting."""
    script = str(Path(__file__).resolve().parents[1] / "bench" / "spatial_guidance.py")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "spatial_guidance.py",
            "--threads",
            "1",
            "--model",
            tiny_world,
            "--pairs",
            "2",
            "--n",
            "2",
            "--setting",
            "2:0",
            "--setting",
            "dpmpp_2m@3:5:0.5:2",
        ],
    )
    runpy.run_path(script, run_name="__main__")
    out = capsys.readouterr().out
    rows = [line.split("|")[1:6] for line in out.splitlines() if line.startswith("| ") and line[2:4] in ("dd", "dp")]
    assert [[c.strip() for c in r] for r in rows] == [
        ["ddim", "2", "0", "1", "1"],
        ["dpmpp_2m", "3", "5", "0.5", "2"],
    ], out
    monkeypatch.setattr(sys, "argv", ["spatial_guidance.py", "--setting", "20"])
    with pytest.raises(SystemExit, match="steps:scale"):
        runpy.run_path(script, run_name="__main__")
    monkeypatch.setattr(sys, "argv", ["spatial_guidance.py", "--setting", "no-such-sampler@8:5"])
    with pytest.raises(SystemExit, match="unknown scheduler 'no-such-sampler'"):
        runpy.run_path(script, run_name="__main__")


def test_embedded_ab_bench_interleaves_variants(tiny_world, monkeypatch, capsys, tmp_path):
    """bench/embedded_ab.py times each variant in turn (the tiny model: the times are noise, that every
    variant runs with its own sampler settings is what CI checks) and refuses an unknown option."""
    script = str(Path(__file__).resolve().parents[1] / "bench" / "embedded_ab.py")
    import bestshot.generation as generation
    from bestshot.train.ddpm import export

    rule = generation.needs_solo_render

    fast = export(tiny_world, tmp_path / "fast", scheduler="dpmpp_2m", defaults={"num_inference_steps": 2})
    # (+plain swaps diffusers' attention processors: the embedded model now loads on the torch-only UNet, so
    # the bench refuses it by name, below)
    variants = [tiny_world, str(fast), f"{tiny_world}+solo"]
    # one torch thread, as every test (the bench's default of 2 fights the other xdist worker for the 2 cores)
    monkeypatch.setattr(sys, "argv", ["embedded_ab.py", "--runs", "1", "--threads", "1", *variants])
    runpy.run_path(script, run_name="__main__")
    rows = [
        line.split("|")[1:7] for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "/" in line
    ]
    got = [[c.strip() for c in r] for r in rows]
    assert [r[0] for r in got] == variants
    assert got[1][1:3] == ["2", "DPM++ 2M"] and got[0][2] != "DPM++ 2M"
    # +solo re-renders the kept image alone (its timing shows it); the batch-invariant default does not
    assert "exact_best" in got[2][5] and not any("exact_best" in r[5] for r in got[:2])
    monkeypatch.setattr(sys, "argv", ["embedded_ab.py", f"{tiny_world}+plain"])
    with pytest.raises(SystemExit, match="torch-only UNet"):
        runpy.run_path(script, run_name="__main__")
    assert generation.needs_solo_render is rule  # nothing patched is left behind for later tests
    monkeypatch.setattr(sys, "argv", ["embedded_ab.py", f"{tiny_world}+fast"])
    with pytest.raises(SystemExit, match="the options are"):
        runpy.run_path(script, run_name="__main__")


@pytest.mark.slow  # a subprocess per phase, each importing torch and diffusers anew (minutes on 2 cores); the
# levers it times are tested one by one in test_generate, test_gpu_paths and test_pruning
def test_gpu_all_runs_tiny_on_cpu(tmp_path):
    """bench/gpu_all.sh (every GPU lever in one run) keeps working: its tiny CPU mode, compiled children
    included (compilation itself is a no-op off CUDA), writes a strict JSON and a Markdown table."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_all.sh"
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            "bash",
            str(script),
            "--tiny",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "w"),
            "--reps",
            "1",
            "--skip",
            "load,cli,world",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "gpu_all.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    paths = [r["path"] for r in data["rows"]]
    assert paths[0] == "plain diffusers, one batched call" and not data["errors"]
    assert any("pruning 4→1" in p for p in paths) and any("compile (warm cache)" in p for p in paths)
    assert all(r.get("psnr_db") is not None for r in data["rows"][1:])  # every path compared with eager
    assert {"unet_ms_per_step_batch_2", "solo_vs_batch_psnr_db"} <= set(data["facts"])
    assert "| path | s per best-of-4 |" in (out / "gpu_all.md").read_text()
