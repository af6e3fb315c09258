"""``bestshot upscale-image``: upscale one image with Real-ESRGAN (or Lanczos) and write it atomically."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import typer
from PIL import Image

from bestshot.errors import BestshotError

app = typer.Typer(help="Upscale an image with Real-ESRGAN.", no_args_is_help=True)


def _read_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise BestshotError(f"input image not found: {path} — check the path")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and not halfway through
            return im.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise BestshotError(f"cannot read {path} as an image ({err}) — is it a valid PNG/JPEG/WebP?") from None


def save_atomic(image: Image.Image, path: Path) -> None:
    """Write to a temp file in the destination folder, then ``os.replace``: never a half-written file."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise BestshotError(f"unknown output extension {path.suffix!r} — use .png, .jpg or .webp")
    if not path.parent.is_dir():
        raise BestshotError(f"output folder does not exist: {path.parent} — create it first")
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        image.save(tmp, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@app.command("upscale-image")
def upscale_image(
    image: Path = typer.Argument(..., help="Input image (PNG, JPEG, WebP...)."),
    scale: int = typer.Option(4, "--scale", "-s", help="Upscale factor; non-native factors are Lanczos-resized."),
    backend: str = typer.Option("auto", help="auto | ncnn | torch | lanczos (auto: torch if --weights, else ncnn)."),
    weights: Path | None = typer.Option(None, help="Official Real-ESRGAN .pth for the torch backend."),
    model: str = typer.Option(
        "realesrgan-x4plus",
        help="ncnn model: realesrgan-x4plus, realesrgan-x4plus-anime, realesr-animevideov3-x2/x3/x4.",
    ),
    tile: int = typer.Option(512, help="Tile size in input pixels (0: whole image at once)."),
    tile_pad: int = typer.Option(32, help="Context pixels around each tile (torch backend)."),
    device: str | None = typer.Option(None, help="torch device (cpu, cuda) or vulkan:N for ncnn."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output path (default: <input>_x<scale>.png)."),
) -> None:
    """Upscale IMAGE by --scale and write the result."""
    from bestshot.upscale.esrgan import get_upscaler

    try:
        src = _read_image(image)
        up = get_upscaler(backend, model=model, weights=weights, tile=tile, tile_pad=tile_pad, device=device)
        dest = out or image.with_name(f"{image.stem}_x{scale}.png")
        start = time.perf_counter()
        result = up.upscale(src, scale)
        save_atomic(result, dest)
    except BestshotError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{image} {src.width}x{src.height} -> {dest} {result.width}x{result.height} "
        f"({up.name}, {time.perf_counter() - start:.1f} s)"
    )
