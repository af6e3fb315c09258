"""The GPU fast paths that CPU tests can reach: the checked fp16 VAE decode and the exact-best rule."""

from types import SimpleNamespace

import pytest
import torch

from bestshot.config import ImgCfg
from bestshot.generation import needs_solo_render, reproduce_note
from bestshot.models.loader import decode_vae_in_fp16


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=4,
        force_upcast=True,
    ).to(torch.float16)


def _fake_decode(calls, overflow):
    from diffusers.models.autoencoders.vae import DecoderOutput

    def decode(self, z, return_dict=True):
        calls.append(self.dtype)
        bad = overflow and self.dtype == torch.float16
        x = torch.full((z.shape[0], 3, 4, 4), float("inf") if bad else 0.5, dtype=self.dtype)
        return DecoderOutput(sample=x) if return_dict else (x,)

    return decode


def test_fp16_vae_decode_stays_fp16_while_finite(monkeypatch):
    from diffusers import AutoencoderKL

    calls = []
    monkeypatch.setattr(AutoencoderKL, "decode", _fake_decode(calls, overflow=False))
    vae = _tiny_vae()
    assert decode_vae_in_fp16(SimpleNamespace(vae=vae))
    assert vae.config.force_upcast is False  # the pipeline no longer upcasts to fp32 itself
    out = vae.decode(torch.zeros(2, 4, 2, 2, dtype=torch.float16), return_dict=False)[0]
    assert out.dtype == torch.float16 and calls == [torch.float16]


def test_fp16_vae_overflow_redoes_the_decode_in_fp32_and_stays_there(monkeypatch):
    from diffusers import AutoencoderKL

    calls = []
    monkeypatch.setattr(AutoencoderKL, "decode", _fake_decode(calls, overflow=True))
    vae = _tiny_vae()
    decode_vae_in_fp16(SimpleNamespace(vae=vae))
    with pytest.warns(UserWarning, match="overflowed in float16"):
        out = vae.decode(torch.zeros(1, 4, 2, 2, dtype=torch.float16)).sample
    assert torch.isfinite(out).all() and calls == [torch.float16, torch.float32]
    # from now on the VAE is what its config asked for: the class's decode, with the pipeline's own upcast
    assert vae.config.force_upcast is True and "decode" not in vars(vae) and vae.dtype == torch.float16


def test_fp16_vae_path_only_where_the_config_asks_for_an_upcast():
    vae = _tiny_vae()
    assert not decode_vae_in_fp16(SimpleNamespace(vae=vae.to(torch.float32)))  # fp32 VAE: nothing to gain
    vae.to(torch.float16).register_to_config(force_upcast=False)
    assert not decode_vae_in_fp16(SimpleNamespace(vae=vae))  # an fp16-safe VAE decodes in fp16 anyway
    assert not decode_vae_in_fp16(SimpleNamespace())  # pixel-space pipelines have no VAE


def _pipe(device, invariant=False):
    return SimpleNamespace(device=torch.device(device), batch_invariant=invariant)


def test_exact_best_auto_rerenders_off_cuda_only():
    auto, on, off = ImgCfg(), ImgCfg(exact_best=True), ImgCfg(exact_best=False)
    assert auto.exact_best is None
    assert needs_solo_render(_pipe("cpu"), auto, 4) and not needs_solo_render(_pipe("cuda"), auto, 4)
    assert needs_solo_render(_pipe("cuda"), on, 4)  # asked for: paid for, also on CUDA
    assert not needs_solo_render(_pipe("cpu"), off, 4)
    assert not needs_solo_render(_pipe("cpu"), auto, 1)  # a batch of one is the solo render
    assert not needs_solo_render(_pipe("cpu", invariant=True), on, 4)  # the batch render is the solo one


def test_reproduce_note_says_what_a_seed_reproduces():
    assert "bit-exact with --seed" in reproduce_note(_pipe("cuda"), 1, False)
    assert "bit-exact with --seed" in reproduce_note(_pipe("cuda"), 4, True)  # re-rendered alone
    note = reproduce_note(_pipe("cuda"), 4, False)
    assert "repeating this call" in note and "batch rounding" in note
