"""The modes of a best-of-N run besides text-to-image, with A1111's meaning and defaults.

* img2img: every candidate starts from ``init_image`` noised to ``strength`` (0 keeps it, 1 ignores it);
* inpaint: img2img that repaints only where ``mask`` is white (``inpainting_fill`` says what the masked
  part starts from, ``inpaint_full_res`` repaints only the masked region at the full generation size) and
  keeps the original outside the mask;
* hires fix: each text-to-image candidate is upscaled by ``hires_scale`` (Lanczos) and repainted at
  ``hires_denoise`` with its own seed.

:class:`Mode` is what the draw (:func:`bestshot.generation._call_pipeline`) needs of a mode: the image
pipeline (``from_pipe`` on the loaded text-to-image pipeline, or the embedded pipeline itself, which takes
``init_image`` / ``mask_image``), the extra pipeline keywords and the composite over the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from .config import ImgCfg
from .errors import BestshotError

FILL_NAMES = ("fill", "original", "latent noise", "latent nothing")


def prepare_mask(mask: Image.Image, size: tuple[int, int], blur: int, invert: bool = False) -> Image.Image:
    """A1111's mask handling: grey levels as given, optionally inverted, resized to the image, edge blurred."""
    m = mask.convert("L") if mask.mode != "RGBA" else mask.getchannel("A")
    if mask.mode == "RGBA" and m.getextrema() == (255, 255):  # opaque RGBA: use its luminance
        m = mask.convert("L")
    if invert:
        m = ImageOps.invert(m)
    if m.size != size:
        m = m.resize(size, Image.Resampling.LANCZOS)
    return m.filter(ImageFilter.GaussianBlur(blur)) if blur else m


def masked_fill(image: Image.Image, mask: Image.Image, fill: int, seed: int) -> Image.Image:
    """A1111's "masked content" done in pixels: 0 fill (the unmasked mean colour), 1 original,
    2 noise, 3 nothing (mid grey)."""
    import numpy as np

    if fill == 1:
        return image
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    if fill == 0:
        keep = m[..., 0] < 0.5
        colour = arr[keep].mean(axis=0) if keep.any() else arr.reshape(-1, 3).mean(axis=0)
        other = np.broadcast_to(colour, arr.shape)
    elif fill == 2:
        other = np.random.default_rng(seed).uniform(0, 255, arr.shape).astype(np.float32)
    else:
        other = np.full(arr.shape, 127.5, np.float32)
    out = arr * (1 - m) + other * m
    return Image.fromarray(out.clip(0, 255).round().astype(np.uint8), "RGB")


def crop_region(mask: Image.Image, padding: int, aspect: float) -> tuple[int, int, int, int]:
    """The mask's bounding box plus padding, widened to the generation's aspect (A1111's "only masked")."""
    w, h = mask.size
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox() or (0, 0, w, h)
    x0, y0, x1, y1 = (
        max(0, box[0] - padding),
        max(0, box[1] - padding),
        min(w, box[2] + padding),
        min(h, box[3] + padding),
    )
    cw, ch = x1 - x0, y1 - y0
    if cw / ch < aspect:  # too tall: widen
        grow = min(w, round(ch * aspect)) - cw
        x0 = max(0, min(x0 - grow // 2, w - (cw + grow)))
        x1 = x0 + cw + grow
    else:
        grow = min(h, round(cw / aspect)) - ch
        y0 = max(0, min(y0 - grow // 2, h - (ch + grow)))
        y1 = y0 + ch + grow
    return x0, y0, x1, y1


def _open(path: str, name: str) -> Image.Image:
    flag = "--" + name.replace("_", "-")
    p = Path(path).expanduser()
    if not p.is_file():
        raise BestshotError(f"{name}: no such file {str(p)!r} — check the path given to {flag}")
    try:
        with Image.open(p) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError):
        raise BestshotError(f"{name}: {str(p)!r} is not an image Pillow can read — give a PNG or JPEG") from None


@dataclass
class Source:
    """What an img2img / inpaint run starts from, at the generation size: the init image (RGB), the mask
    (L, blurred, 255 = repaint) or None, and notes for the record (what was resized)."""

    init: Image.Image
    mask: Image.Image | None = None
    notes: list[str] = field(default_factory=list)


def read_source(cfg: ImgCfg) -> Source | None:
    """``cfg.init_image`` / ``cfg.mask`` read and prepared (None without an init image); a missing or
    unreadable file is one error naming the field."""
    if cfg.init_image is None:
        return None
    init = _open(cfg.init_image, "init_image")
    mask = _open(cfg.mask, "mask") if cfg.mask is not None else None
    notes = []
    if mask is not None and mask.size != init.size:
        notes.append(f"mask {mask.size[0]}x{mask.size[1]} resized to the init image's {init.size[0]}x{init.size[1]}")
        mask = mask.resize(init.size, Image.Resampling.LANCZOS)
    return source_from(init, mask, cfg, notes)


def source_from(
    init: Image.Image, mask: Image.Image | None, cfg: ImgCfg, notes: list[str] | None = None, prepared: bool = False
) -> Source:
    """A :class:`Source` from images in memory (the server's decoded request); ``prepared``: the mask is
    blurred already (:func:`prepare_mask`)."""
    size = (cfg.width, cfg.height)
    notes = list(notes or [])
    if init.size != size:
        notes.append(f"init image {init.size[0]}x{init.size[1]} resized to {size[0]}x{size[1]}")
    full = init.convert("RGB").resize(size, Image.Resampling.LANCZOS) if init.size != size else init.convert("RGB")
    m = prepare_mask(mask, size, 0 if prepared else cfg.mask_blur) if mask is not None else None
    if m is not None and m.getextrema()[1] == 0:
        raise BestshotError("mask is all black: nothing to repaint — white marks what to repaint")
    return Source(full, m, notes)


def denoise_steps(steps: int, strength: float) -> int:
    """The steps an image-to-image call runs (diffusers runs ``int(steps * strength)``)."""
    return max(1, int(steps * strength))


def check(cfg: ImgCfg, source: Source | None) -> None:
    """Refuse settings that would run no denoising step, before any model loads."""
    if source is not None and cfg.strength > 0 and int(cfg.steps_base * cfg.strength) < 1:
        raise BestshotError(
            f"strength (A1111's denoising_strength): {cfg.strength} x {cfg.steps_base} steps leaves no denoising "
            "step — raise it or the steps"
        )
    if cfg.hires:
        steps = cfg.hires_steps or cfg.steps_base
        if int(steps * cfg.hires_denoise) < 1:
            raise BestshotError(
                f"hires_denoise: {cfg.hires_denoise} x {steps} steps leaves no hires denoising step — raise it"
            )


def image_pipeline(pipe: Any, family: Any, model: str, inpaint: bool) -> Any:
    """The image-to-image (or inpainting) pipeline sharing ``pipe``'s weights: ``from_pipe`` (no second
    load); the embedded pipeline takes ``init_image`` / ``mask_image`` itself."""
    if family.pipeline_class == "BestshotWorldPipeline":
        return pipe
    if family.img2img_class is None:
        raise BestshotError(
            f"img2img is not available for model {model!r} (family {family.name}): it has no image-to-image "
            "pipeline — drop --init-image / --hires-scale, or use an SD 1.5 / SDXL / SD3 model"
        )
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    try:
        if inpaint:
            if not family.inpaint:
                raise BestshotError(
                    f"inpainting is not available for model {model!r} (family {family.name}) — drop --mask, "
                    "or use an SD 1.5 / SDXL / SD3 model"
                )
            i2i = AutoPipelineForInpainting.from_pipe(pipe)
        else:
            i2i = AutoPipelineForImage2Image.from_pipe(pipe)
    except (ValueError, KeyError) as e:
        raise BestshotError(f"img2img is not available for model {model!r}: {e}") from None
    if hasattr(i2i, "set_progress_bar_config"):
        i2i.set_progress_bar_config(disable=True)
    return i2i


@dataclass
class Mode:
    """One run's mode, ready to draw: ``kind`` ("txt2img", "img2img", "inpaint"), the image pipeline (None
    for plain text-to-image), the source, and the hires pass's settings (None: off)."""

    kind: str
    pipe: Any = None
    source: Source | None = None
    hires: ImgCfg | None = None
    region: tuple[int, int, int, int] | None = None
    _image: Image.Image | None = None
    _mask: Image.Image | None = None

    @classmethod
    def build(cls, pipe: Any, family: Any, cfg: ImgCfg, source: Source | None) -> Mode:
        if source is None and not cfg.hires:
            return cls("txt2img")
        kind = "txt2img" if source is None else ("inpaint" if source.mask is not None else "img2img")
        mode = cls(kind, image_pipeline(pipe, family, cfg.model, kind == "inpaint"), source)
        if cfg.hires:
            w, h = (max(8, round(v * cfg.hires_scale) // 8 * 8) for v in (cfg.width, cfg.height))
            steps = cfg.hires_steps or cfg.steps_base
            mode.hires = replace(cfg, width=w, height=h, steps_base=steps, strength=cfg.hires_denoise)
        if source is not None:
            mode._image, mode._mask = source.init, source.mask
            if source.mask is not None:
                mode._image = masked_fill(source.init, source.mask, cfg.inpainting_fill, cfg.seed_base)
                if cfg.inpaint_full_res:
                    size = (cfg.width, cfg.height)
                    mode.region = crop_region(source.mask, cfg.inpaint_full_res_padding, cfg.width / cfg.height)
                    mode._image = mode._image.crop(mode.region).resize(size, Image.Resampling.LANCZOS)
                    mode._mask = source.mask.crop(mode.region).resize(size, Image.Resampling.LANCZOS)
        return mode

    def image_kwargs(self, cfg: ImgCfg, images: list[Image.Image] | None = None) -> dict[str, Any]:
        """The image keywords of one call (``images``: the hires pass's inputs, one per candidate); a
        pipeline drops those its ``__call__`` does not take (the embedded one's image is ``init_image``)."""
        image: Any = images if images is not None else self._image
        kw: dict[str, Any] = dict(image=image, init_image=image, strength=cfg.strength)
        if images is None and self._mask is not None:
            kw["mask_image"] = self._mask
        return kw

    def composite(self, out: Image.Image) -> Image.Image:
        """An inpainted candidate pasted over the original outside the mask (others as drawn)."""
        if self.source is None or self.source.mask is None:
            return out
        full = self.source.init
        if self.region is not None:
            x0, y0, x1, y1 = self.region
            patch = out.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
            out = full.copy()
            out.paste(patch, (x0, y0))
        return Image.composite(out.convert("RGB"), full, self.source.mask)

    def steps(self, cfg: ImgCfg) -> int:
        """The denoising steps of the run's last pass (what a finished candidate reached)."""
        if self.hires is not None:
            return denoise_steps(self.hires.steps_base, self.hires.strength)
        if self.source is not None:
            return denoise_steps(cfg.steps_base, cfg.strength)
        return cfg.steps_base

    def infotext(self, cfg: ImgCfg) -> dict[str, Any]:
        """A1111's infotext keys of the mode (the ``parameters`` PNG chunk)."""
        out: dict[str, Any] = {}
        if self.source is not None:
            out["Denoising strength"] = cfg.strength
        if self.kind == "inpaint":
            out.update(
                {
                    "Mask blur": cfg.mask_blur,
                    "Masked content": FILL_NAMES[cfg.inpainting_fill],
                    "Inpaint area": "Only masked" if cfg.inpaint_full_res else "Whole picture",
                }
            )
            if cfg.inpaint_full_res:
                out["Masked area padding"] = cfg.inpaint_full_res_padding
        if self.hires is not None:
            out.update(
                {
                    "Denoising strength": cfg.hires_denoise,
                    "Hires upscale": cfg.hires_scale,
                    "Hires steps": cfg.hires_steps,
                    "Hires upscaler": "Lanczos",
                }
            )
        return out

    def settings(self, cfg: ImgCfg) -> dict[str, Any]:
        """The mode's part of the record's ``settings`` (empty for plain text-to-image)."""
        out: dict[str, Any] = {}
        if self.source is not None:
            out.update(init_image=cfg.init_image, strength=cfg.strength, denoising_strength=cfg.strength)
        if self.kind == "inpaint":
            out.update(
                mask=cfg.mask,
                mask_blur=cfg.mask_blur,
                inpainting_fill=cfg.inpainting_fill,
                inpaint_full_res=cfg.inpaint_full_res,
                inpaint_full_res_padding=cfg.inpaint_full_res_padding,
            )
        if self.hires is not None:
            out.update(
                hires_scale=cfg.hires_scale,
                hires_steps=self.hires.steps_base,
                hires_denoise=cfg.hires_denoise,
                hires_size=f"{self.hires.width}x{self.hires.height}",
            )
        return out


def upscale_all(images: list[Image.Image], size: tuple[int, int]) -> list[Image.Image]:
    """The hires pass's inputs: each candidate upscaled to ``size`` (Lanczos, as A1111's non-latent modes)."""
    return [im.convert("RGB").resize(size, Image.Resampling.LANCZOS) for im in images]
