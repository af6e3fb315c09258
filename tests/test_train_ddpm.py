"""DDPM trainer: learns, checkpoints, resumes exactly, refuses foreign checkpoints, exports and samples."""

import json

import pytest
import torch
from PIL import Image

from bestshot.errors import BestshotError
from bestshot.models.loader import dtype_kwargs
from bestshot.train.clip_train import ClipTrainConfig, save_clip_folder
from bestshot.train.common import load_config
from bestshot.train.ddpm import (
    DDPMConfig,
    build_unet,
    encode_text,
    export,
    load_checkpoint,
    load_clip,
    noise_scheduler,
    train,
)
from tiny_models import build_train_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_train_clip(tmp_path_factory.mktemp("clip"))


def _kill_in_step(monkeypatch, n: int) -> None:
    """Simulate `kill -9` in the middle of step ``n`` (its EMA update raises); undone by monkeypatch."""
    from bestshot.train import common

    real_update, calls = common.EMA.update, {"n": 0}

    def killed(self, model):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        real_update(self, model)

    monkeypatch.setattr(common.EMA, "update", killed)


def cfg_for(clip_dir, out, **kw) -> DDPMConfig:
    base = dict(
        clip=str(clip_dir),
        img_size=16,
        block_out_channels=(32, 32),
        attention_levels=(False, True),
        batch_size=4,
        steps=6,
        ckpt_every=3,
        out_dir=str(out),
        dataset_length=64,
        warmup_steps=1,
        lr=1e-3,
        log_every=100,
    )
    base.update(kw)
    return DDPMConfig(**base)


def fixed_loss(cfg: DDPMConfig, state: dict) -> float:
    """Loss of a model state on one fixed (x0, t, noise) batch — the training batch of a 4-item dataset."""
    from bestshot.train.data import build_dataset

    clip, tok = load_clip(cfg.clip)
    unet = build_unet(cfg, clip.config)
    unet.load_state_dict(state)
    ds = build_dataset(cfg.dataset, cfg.img_size, cfg.dataset_length, cfg.seed)
    x0 = torch.stack([ds[i][0] for i in range(4)])
    hidden, pooled = encode_text(clip, tok, [ds[i][1] for i in range(4)], cfg.cond)
    g = torch.Generator().manual_seed(123)
    t = torch.tensor([50, 200, 400, 700])
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        pred = unet(
            noise_scheduler(cfg).add_noise(x0, noise, t), t, encoder_hidden_states=hidden, class_labels=pooled
        ).sample
    return (pred - noise).pow(2).mean().item()


def test_training_lowers_loss_on_a_fixed_batch(clip_dir, tmp_path):
    cfg = cfg_for(clip_dir, tmp_path / "run", dataset_length=4, steps=25, ckpt_every=25, lr=2e-3, min_snr_gamma=0)
    torch.manual_seed(cfg.seed)
    clip, _ = load_clip(cfg.clip)
    before = fixed_loss(cfg, build_unet(cfg, clip.config).state_dict())  # same init as train() (seeded)
    train(cfg)
    after = fixed_loss(cfg, load_checkpoint(tmp_path / "run")["model"])
    assert after < 0.8 * before
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0


def test_resume_continues_exactly_and_config_mismatch_is_refused(clip_dir, tmp_path, monkeypatch):
    from bestshot.train import common

    straight = train(cfg_for(clip_dir, tmp_path / "a"))
    assert straight["step"] == 6
    real_update = common.EMA.update
    _kill_in_step(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(clip_dir, tmp_path / "b"))
    monkeypatch.setattr(common.EMA, "update", real_update)
    assert load_checkpoint(tmp_path / "b")["step"] == 3  # lost at most one interval (ckpt_every=3)
    resumed = train(cfg_for(clip_dir, tmp_path / "b"), resume=True)
    assert resumed["step"] == 6
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4)
    assert [s for s, _ in b["losses"]] == list(range(1, 7))
    with pytest.raises(BestshotError, match=r"lr: checkpoint 0.001 vs config 0.002"):
        train(cfg_for(clip_dir, tmp_path / "b", steps=9, lr=2e-3), resume=True)
    for k in a["ema"]["shadow"]:
        torch.testing.assert_close(a["ema"]["shadow"][k], b["ema"]["shadow"][k], atol=1e-5, rtol=1e-4)
    with pytest.raises(BestshotError, match="--resume"):
        train(cfg_for(clip_dir, tmp_path / "b", steps=9))


def test_yaml_config_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("img_size: 16\nblock_out_channels: [32, 64]\nattention_levels: [false, true]\n")
    cfg = load_config(DDPMConfig, p)
    assert cfg.block_out_channels == (32, 64) and cfg.img_size == 16
    p.write_text("img_sise: 16\n")
    with pytest.raises(BestshotError, match="img_sise"):
        load_config(DDPMConfig, p)
    with pytest.raises(BestshotError, match="CLIP folder"):
        DDPMConfig(clip=str(tmp_path / "nope")).validate()


def test_export_and_sample_grid_and_gif(clip_dir, tmp_path):
    from bestshot.models.world_pipeline import BestshotWorldPipeline
    from bestshot.train.sample import sample

    train(cfg_for(clip_dir, tmp_path / "run", steps=2, ckpt_every=2))
    out = export(tmp_path / "run", tmp_path / "model", defaults={"guidance_scale": 3.0})
    d = json.loads((out / "bestshot_defaults.json").read_text())
    assert d["guidance_scale"] == 3.0 and d["height"] == 16 and d["scheduler"] == "ddim"
    pipe = BestshotWorldPipeline.from_pretrained(out, **dtype_kwargs(torch.float32))
    assert pipe.unet.dtype == torch.float32
    grid = sample(out, ["a red circle", "a blue square"], tmp_path / "g.png", n=3, steps=3, gif=tmp_path / "d.gif")
    im = Image.open(grid)
    assert im.size[0] > im.size[1] > 0
    gif = Image.open(tmp_path / "d.gif")
    assert gif.n_frames >= 4
    sample(tmp_path / "run", ["a red circle"], tmp_path / "g2.png", n=1, steps=2, scheduler="ddim")  # from a checkpoint
    with pytest.raises(BestshotError, match="ddim or ddpm"):
        sample(out, ["x"], tmp_path / "g3.png", scheduler="euler")


def test_v_prediction_learns_and_exports_its_objective(clip_dir, tmp_path):
    from bestshot.train.ddpm import pipeline_from_checkpoint

    cfg = cfg_for(
        clip_dir, tmp_path / "v", dataset_length=4, steps=25, ckpt_every=25, lr=2e-3, prediction_type="v_prediction"
    )
    summary = train(cfg)
    losses = [v for _, v in load_checkpoint(tmp_path / "v")["losses"]]
    assert summary["step"] == 25 and sum(losses[-5:]) < 0.8 * sum(losses[:5])
    pipe, _, _ = pipeline_from_checkpoint(tmp_path / "v")
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # sampled with the objective it learned
    with pytest.raises(BestshotError, match="prediction_type"):
        cfg_for(clip_dir, tmp_path / "x", prediction_type="x0").validate()


def test_init_from_starts_a_new_run_from_another_runs_ema(clip_dir, tmp_path):
    train(cfg_for(clip_dir, tmp_path / "a", steps=3, ckpt_every=3))
    src = load_checkpoint(tmp_path / "a")["ema"]["shadow"]
    # steps=0 would not run; one step at lr 0 leaves the weights where init_from put them
    train(
        cfg_for(
            clip_dir,
            tmp_path / "b",
            steps=1,
            ckpt_every=1,
            lr=0.0,
            warmup_steps=0,
            prediction_type="v_prediction",
            init_from=str(tmp_path / "a"),
        )
    )
    got = load_checkpoint(tmp_path / "b")["model"]
    for k in src:
        torch.testing.assert_close(got[k].float(), src[k], atol=1e-6, rtol=0)
    with pytest.raises(BestshotError, match="another UNet architecture"):
        train(cfg_for(clip_dir, tmp_path / "c", block_out_channels=(32, 64), init_from=str(tmp_path / "a")))
    with pytest.raises(BestshotError, match="init_from"):
        cfg_for(clip_dir, tmp_path / "d", init_from=str(tmp_path / "nope")).validate()
    # an exported pipeline folder (its unet/, stored in fp16) starts a run too: fine-tuning a shipped model
    export(tmp_path / "a", tmp_path / "model")
    train(
        cfg_for(
            clip_dir, tmp_path / "e", steps=1, ckpt_every=1, lr=0.0, warmup_steps=0, init_from=str(tmp_path / "model")
        )
    )
    got = load_checkpoint(tmp_path / "e")["model"]
    for k in src:
        torch.testing.assert_close(got[k].float(), src[k].half().float(), atol=1e-6, rtol=0)


def test_ema_loads_onto_the_device_of_the_model_it_averages():
    from bestshot.train.common import EMA

    ema = EMA(torch.nn.Linear(2, 2).to("meta"))  # stands in for a CUDA model: a checkpoint is loaded on CPU
    ema.load_state_dict(EMA(torch.nn.Linear(2, 2)).state_dict())
    assert all(v.device.type == "meta" for v in ema.shadow.values())


def test_checkpoint_without_a_newer_field_resumes_with_its_default(clip_dir, tmp_path):
    train(cfg_for(clip_dir, tmp_path / "old", steps=2, ckpt_every=2))
    path = tmp_path / "old" / "latest.pt"
    ck = torch.load(path, weights_only=False)
    del ck["config"]["prediction_type"]  # as written before the field existed
    torch.save(ck, path)
    assert train(cfg_for(clip_dir, tmp_path / "old", steps=3, ckpt_every=3), resume=True)["step"] == 3
    with pytest.raises(BestshotError, match="prediction_type: checkpoint 'epsilon' vs config 'v_prediction'"):
        train(cfg_for(clip_dir, tmp_path / "old", steps=4, prediction_type="v_prediction"), resume=True)


def _fine_tuned_clips(clip_dir, tmp_path):
    """Two CLIP folders made from the training CLIP: ``vision_ft`` (image side changed, text tower as trained)
    and ``text_ft`` (text tower changed too). Returns (the vision_ft model, its folder, the text_ft folder)."""
    clip, tok = load_clip(clip_dir)
    cc = load_config(ClipTrainConfig, None, **json.loads((clip_dir / "bestshot_clip_config.json").read_text()))
    with torch.no_grad():
        clip.visual_projection.weight.mul_(-1.0)
    save_clip_folder(clip, tok, cc, tmp_path / "vision_ft")
    text_ft, _ = load_clip(tmp_path / "vision_ft")
    with torch.no_grad():
        text_ft.text_projection.weight.mul_(-1.0)
    save_clip_folder(text_ft, tok, cc, tmp_path / "text_ft")
    return clip, str(tmp_path / "vision_ft"), str(tmp_path / "text_ft")


def _assert_image_side_is(folder, clip):
    from transformers import CLIPModel

    shipped = CLIPModel.from_pretrained(folder / "clip", dtype=torch.float32)
    torch.testing.assert_close(shipped.visual_projection.weight, clip.visual_projection.weight, atol=1e-3, rtol=1e-3)


def test_export_with_another_clip_needs_the_same_text_tower(clip_dir, tmp_path):
    """A CLIP whose image side was fine-tuned (freeze_text) may replace the training CLIP; another text tower may
    not."""

    train(cfg_for(clip_dir, tmp_path / "run", steps=1, ckpt_every=1))
    clip, vision_ft, text_ft = _fine_tuned_clips(clip_dir, tmp_path)
    out = export(tmp_path / "run", tmp_path / "model", clip_dir=vision_ft)
    (out / "plot.png").write_bytes(b"png")  # a model card's plot survives re-exporting over the folder
    export(tmp_path / "run", out, clip_dir=vision_ft)
    assert (out / "plot.png").read_bytes() == b"png"
    _assert_image_side_is(out, clip)
    with pytest.raises(BestshotError, match="another text tower"):
        export(tmp_path / "run", tmp_path / "model2", clip_dir=text_ft)


def test_reexport_an_exported_folder_with_a_new_image_side(clip_dir, tmp_path):
    """The shipped model's CLIP can be swapped for one trained further on the image side without its run folder."""
    train(cfg_for(clip_dir, tmp_path / "run", steps=1, ckpt_every=1))
    first = export(tmp_path / "run", tmp_path / "model", defaults={"num_inference_steps": 7})
    clip, vision_ft, text_ft = _fine_tuned_clips(clip_dir, tmp_path)
    before = json.loads((first / "bestshot_defaults.json").read_text())
    unet_before = (first / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    out = export(first, first, clip_dir=vision_ft)  # in place
    assert json.loads((out / "bestshot_defaults.json").read_text()) == before  # steps 7, trained_steps kept
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == unet_before
    _assert_image_side_is(out, clip)
    with pytest.raises(BestshotError, match="another text tower"):
        export(first, tmp_path / "model2", clip_dir=text_ft)
    # spatial guidance lives in model_index.json: set by an export, kept by a re-export that does not name it
    assert json.loads((first / "model_index.json").read_text())["spatial_guidance_scale"] == 0.0
    guided = export(first, tmp_path / "guided", spatial_guidance_scale=5.0)
    assert json.loads((guided / "model_index.json").read_text())["spatial_guidance_scale"] == 5.0
    kept = export(guided, tmp_path / "kept", spatial_guidance_end=0.5)
    assert json.loads((kept / "model_index.json").read_text())["spatial_guidance_scale"] == 5.0
    assert json.loads((kept / "model_index.json").read_text())["spatial_guidance_end"] == 0.5
    assert (kept / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == unet_before
    with pytest.raises(BestshotError, match="spatial_guidance_scale"):
        export(first, tmp_path / "bad", spatial_guidance_scale=-1.0)
    with pytest.raises(BestshotError, match="spatial_guidance_end"):
        export(first, tmp_path / "bad", spatial_guidance_end=0.0)
    every = export(kept, tmp_path / "every", spatial_guidance_every=2)
    index = json.loads((every / "model_index.json").read_text())
    assert (index["spatial_guidance_scale"], index["spatial_guidance_end"], index["spatial_guidance_every"]) == (
        5.0,
        0.5,
        2,
    )
    with pytest.raises(BestshotError, match="spatial_guidance_every"):
        export(first, tmp_path / "bad", spatial_guidance_every=0)
    # a sampler named at export is the folder's scheduler and its default for generate; a re-export keeps it
    dpm = export(every, tmp_path / "dpm", scheduler="DPM++ 2M", defaults={"num_inference_steps": 8})
    assert (
        json.loads((dpm / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        == "DPMSolverMultistepScheduler"
    )
    assert json.loads((dpm / "bestshot_defaults.json").read_text())["scheduler"] == "dpmpp_2m"
    again = export(dpm, tmp_path / "dpm2")
    assert json.loads((again / "bestshot_defaults.json").read_text())["scheduler"] == "dpmpp_2m"
    assert (
        json.loads((again / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        == "DPMSolverMultistepScheduler"
    )
    with pytest.raises(BestshotError, match="unknown scheduler"):
        export(first, tmp_path / "bad", scheduler="no-such-sampler")


def test_augment_flip_and_crop():
    from bestshot.train.ddpm import augment

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    assert torch.equal(augment(x, 1.0, 0, torch.Generator().manual_seed(0)), x.flip(-1))
    assert torch.equal(augment(x, 0.0, 0, torch.Generator().manual_seed(0)), x)
    a = augment(x, 0.5, 2, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, augment(x, 0.5, 2, torch.Generator().manual_seed(1)))
    # each crop is an 8x8 window of the reflect-padded image
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(a[i], w) for w in windows)


def test_unet_knobs_accumulation_history_and_similarity(clip_dir, tmp_path, monkeypatch):
    """t_embed_dim / c_embed_dim reach the UNet; grad_accum=2 resumes exactly; checkpoints/ keeps the last K
    and one per epoch; the exported model samples and plots its prompt↔sample similarity."""
    from bestshot.train.sample import sample

    kw = dict(
        t_embed_dim=24,
        c_embed_dim=20,
        grad_accum=2,
        batch_size=2,
        dataset_length=8,
        aug_hflip=0.5,
        aug_crop_pad=2,
        ckpt_every=1,
        ckpt_keep_last=2,
        ckpt_every_epochs=1.0,
    )
    cfg = cfg_for(clip_dir, tmp_path / "a", **kw)
    clip, _ = load_clip(cfg.clip)
    unet = build_unet(cfg, clip.config)
    assert unet.config.cross_attention_dim == 20 and unet.config.encoder_hid_dim == clip.config.text_config.hidden_size
    assert unet.time_embedding.linear_1.out_features == 24
    assert train(cfg)["step"] == 6
    hist = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    # 4 items per step, 8 items per epoch: an epoch every 2 steps
    assert hist == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt", "step_00000005.pt", "step_00000006.pt"]
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "epoch_0002.pt")["step"] == 4
    # a run killed in step 5 and resumed ends where the straight run ended
    from bestshot.train import common

    real_update = common.EMA.update
    _kill_in_step(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(clip_dir, tmp_path / "b", **kw))
    monkeypatch.setattr(common.EMA, "update", real_update)
    assert train(cfg_for(clip_dir, tmp_path / "b", **kw), resume=True)["step"] == 6
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4)
    assert DDPMConfig(epochs=2, dataset_length=80, batch_size=4, grad_accum=5).total_steps() == 8
    with pytest.raises(BestshotError, match="aug_hflip"):
        cfg_for(clip_dir, tmp_path / "c", aug_hflip=1.5).validate()
    out = export(tmp_path / "a" / "checkpoints" / "epoch_0002.pt", tmp_path / "model")
    sample(out, ["a red circle", "a blue square"], tmp_path / "g.png", n=2, steps=2, similarity=tmp_path / "sim.png")
    assert Image.open(tmp_path / "sim.png").size[0] > 100
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.slow  # two torchrun launches of 2 processes, each importing torch anew (~30 s); the training loop they
# run is the one the single-process tests above check (learning, checkpoints, resume)
def test_data_parallel_on_two_cpu_processes(clip_dir, tmp_path):
    """The same config on 2 processes (torchrun, gloo on CPU): DDP through accelerate, 2x the items per step,
    one writer; a resumed 2-process run continues the checkpoint."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    cfg = dict(
        clip=str(clip_dir),
        img_size=16,
        block_out_channels=[32, 32],
        attention_levels=[False, True],
        batch_size=2,
        grad_accum=2,
        steps=2,
        ckpt_every=2,
        dataset_length=16,
        warmup_steps=1,
        log_every=1,
        threads=1,
        ckpt_every_epochs=1.0,
        out_dir=str(tmp_path / "run"),
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}

    def launch(*extra):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            "-m",
            "bestshot.train.cli",
            "ddpm",
            "--config",
            str(tmp_path / "c.yaml"),
            *extra,
        ]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    p = launch()
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["step"] == 2
    assert p.stdout.count('"processes": 2') == 1  # only the main process prints
    ck = load_checkpoint(tmp_path / "run")
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    # 2 processes x 2 micro-batches x 2 items = 8 items per step: an epoch of 16 items every 2 steps
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch_0001.pt"]
    p = launch("--resume", "--steps", "4")
    assert p.returncode == 0, p.stderr[-3000:]
    assert load_checkpoint(tmp_path / "run")["step"] == 4
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
