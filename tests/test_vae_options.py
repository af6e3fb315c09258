"""--vae-tiling / --vae-slicing (ImgCfg and the curate config) reach the pipeline's VAE."""

import pytest
import torch

from bestshot.curate.config import CurateCfg
from bestshot.models.loader import apply_vae_options, load_pipeline
from helpers import run_cli


def test_load_pipeline_switches_the_vae_each_call(tiny_sdxl):
    pipe = load_pipeline(tiny_sdxl, device="cpu", vae_tiling=True, vae_slicing=True)
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    again = load_pipeline(tiny_sdxl, device="cpu")  # the cached pipeline: back to the default for this call
    assert again is pipe and not pipe.vae.use_tiling and not pipe.vae.use_slicing


def test_tiled_decode_is_used_and_close_to_the_full_one(tiny_sdxl):
    """A latent larger than the tile goes through tiled_decode, and gives about the same image."""
    pipe = load_pipeline(tiny_sdxl, device="cpu")
    vae = pipe.vae
    torch.manual_seed(0)
    z = torch.randn(1, 4, 24, 24) * 0.3
    with torch.no_grad():
        full = vae.decode(z).sample
        apply_vae_options(pipe, tiling=True)
        saved = vae.tile_latent_min_size, vae.tile_sample_min_size
        scale = full.shape[-1] // z.shape[-1]
        vae.tile_latent_min_size, vae.tile_sample_min_size = 16, 16 * scale  # tiles smaller than this latent
        calls = []
        real = vae.tiled_decode
        vae.tiled_decode = lambda *a, **k: calls.append(1) or real(*a, **k)
        try:
            tiled = vae.decode(z).sample
        finally:
            del vae.tiled_decode
            apply_vae_options(pipe)
            vae.tile_latent_min_size, vae.tile_sample_min_size = saved
    assert calls and tiled.shape == full.shape
    # random weights: per-tile group norms make it differ, but it is the same picture, not another one
    cos = torch.nn.functional.cosine_similarity(tiled.flatten(), full.flatten(), dim=0)
    other = torch.nn.functional.cosine_similarity(tiled.flatten(), full.flip(-1).flatten(), dim=0)
    assert cos > 0.8 and cos > other + 0.2


def test_generate_cli_flags_reach_the_vae(tiny_sdxl, tiny_clip, tmp_path, capsys, monkeypatch):
    import bestshot.models.loader as L

    seen = []
    real = L.apply_vae_options
    monkeypatch.setattr(L, "apply_vae_options", lambda p, t=False, s=False: seen.append((t, s)) or real(p, t, s))
    args = [
        "generate",
        "a red circle",
        "--model",
        tiny_sdxl,
        "--scorer",
        tiny_clip,
        "-n",
        "1",
        "--steps",
        "2",
        "--size",
        "32x32",
        "--clip-min",
        "-1",
        "--out",
        str(tmp_path / "o"),
        "--log",
        str(tmp_path / "log.jsonl"),
        "--json",
        "--device",
        "cpu",
    ]
    code, stdout, err = run_cli(args + ["--vae-tiling", "--vae-slicing"], capsys, monkeypatch)
    assert code == 0, err
    assert seen[-1] == (True, True)
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert seen[-1] == (False, False)


def test_embedded_model_warns_that_it_has_no_vae(tiny_world):
    pipe = load_pipeline(tiny_world, device="cpu")
    with pytest.warns(UserWarning, match="no VAE"):
        apply_vae_options(pipe, tiling=True)


def test_curate_config_keys(tmp_path):
    from bestshot.curate.config import load_config

    p = tmp_path / "config.yaml"
    p.write_text("memory:\n  strategy: gpu\n  vae_tiling: true\n  vae_slicing: true\n")
    cfg = load_config(p)
    assert cfg.memory.vae_tiling and cfg.memory.vae_slicing
    assert not CurateCfg().memory.vae_tiling
