"""Reference images of a run (control images, IP-Adapter images): a file path or a ``data:image/...;base64,``
URL (what the HTTP server hands over), opened as RGB with one clear error naming the setting."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import BestshotError

MAX_PIXELS = 8192 * 8192


def to_data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def describe(ref: str) -> str:
    """A short, loggable name of a reference (a data URL is not written out in full)."""
    return f"<inline image, {len(ref)} characters>" if ref.startswith("data:") else ref


def open_image(ref: str, setting: str) -> Image.Image:
    """The image ``ref`` names, RGB; a :class:`BestshotError` naming ``setting`` when it is not one."""
    try:
        if ref.startswith("data:"):
            raw = base64.b64decode(ref.split(",", 1)[1], validate=False)
            src: io.BytesIO | Path = io.BytesIO(raw)
        else:
            src = Path(ref)
            if not src.is_file():
                raise BestshotError(f"{setting}: no such file {ref!r} — give an image file")
        with Image.open(src) as img:
            if img.width * img.height > MAX_PIXELS:
                raise BestshotError(f"{setting}: {img.width}x{img.height} is over 8192x8192 — send a smaller image")
            return img.convert("RGB")
    except (UnidentifiedImageError, binascii.Error, IndexError, ValueError, OSError, Image.DecompressionBombError):
        raise BestshotError(f"{setting}: {describe(ref)!r} is not a readable image — give a PNG or JPEG") from None
