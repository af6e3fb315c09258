"""Caption manifests: the (image, caption) lists that evaluation generates from and compares against.

A manifest is a CSV with columns ``image_path,caption,image_id``. It is built once from COCO captions
(``captions_train2017.json``) or from a folder of images with ``.txt`` captions beside them, and read back
by generation and metrics. Building is seeded so the same command gives the same subset; reading checks
every image, because one missing or truncated file among a thousand should cost one row, not the run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from bestshot.errors import BestshotError

COLUMNS = ("image_path", "caption", "image_id")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Row:
    """One manifest row. ``row_id`` is the 0-based data-row index in the CSV: stable even when other
    rows are skipped, so generated images can be named by it."""

    row_id: int
    image_path: Path
    caption: str
    image_id: str


def _report(what: str, names: list[str], limit: int = 10) -> None:
    shown = ", ".join(names[:limit]) + (f" … and {len(names) - limit} more" if len(names) > limit else "")
    warnings.warn(f"{what} ({len(names)}), skipped: {shown}", stacklevel=3)


def write_manifest(rows: list[tuple[str, str, str]], out_csv: str | os.PathLike) -> Path:
    """Write ``(image_path, caption, image_id)`` rows atomically (temp file in the same folder + replace)."""
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _n_words(caption: str) -> int:
    return len(caption.split())


def _clean(caption: str) -> str:
    """One line, single spaces: COCO captions carry stray newlines and double spaces."""
    return " ".join(caption.split())


def build_coco_manifest(
    annotations: str | os.PathLike,
    images_root: str | os.PathLike,
    out_csv: str | os.PathLike,
    k: int = 1000,
    min_len: int = 5,
    seed: int = 42,
) -> Path:
    """COCO captions JSON → manifest of ``k`` images, one caption each.

    Captions with fewer than ``min_len`` words are dropped; each image keeps one of its remaining
    captions, chosen with ``seed``; images are then visited in a seeded order and the first ``k`` whose
    file exists are kept (missing files are reported, not fatal, so a partial COCO copy still works).
    """
    ann_path = Path(annotations)
    if not ann_path.is_file():
        raise BestshotError(
            f"COCO annotations not found: {ann_path} — pass --annotations path/to/captions_train2017.json"
        )
    try:
        data = json.loads(ann_path.read_text(encoding="utf-8"))
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        captions: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            captions.setdefault(int(ann["image_id"]), []).append(_clean(str(ann["caption"])))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BestshotError(
            f"{ann_path} is not a COCO captions file ({type(e).__name__}: {e}) — "
            "expected images[] with id/file_name and annotations[] with image_id/caption"
        ) from e
    if k < 1:
        raise BestshotError(f"--k must be at least 1, got {k}")

    rng = random.Random(seed)
    chosen: dict[int, str] = {}
    for image_id in sorted(captions):  # sorted: the seeded choices must not depend on JSON order
        ok = [c for c in captions[image_id] if _n_words(c) >= min_len]
        if ok and image_id in files:
            chosen[image_id] = rng.choice(ok)
    order = sorted(chosen)
    rng.shuffle(order)

    root = Path(images_root).resolve()
    rows, missing = [], []
    for image_id in order:
        if len(rows) == k:
            break
        path = root / files[image_id]
        if not path.is_file():
            missing.append(str(path))
            continue
        rows.append((str(path), chosen[image_id], str(image_id)))
    if missing:
        _report(f"COCO images missing under {root}", missing)
    if not rows:
        raise BestshotError(
            f"no usable image in {ann_path} (min_len={min_len}, images root {root}) — "
            "check --images-root points at the train2017 folder and --min-len is not too high"
        )
    if len(rows) < k:
        warnings.warn(f"only {len(rows)} images qualify, fewer than --k {k}", stacklevel=2)
    return write_manifest(rows, out_csv)


def build_folder_manifest(
    folder: str | os.PathLike, out_csv: str | os.PathLike, k: int | None = None, min_len: int = 0, seed: int = 42
) -> Path:
    """Folder of images with ``name.txt`` captions beside ``name.png`` → manifest.

    ``image_id`` is the image path relative to ``folder`` without its suffix. Images without a caption
    file (or with one shorter than ``min_len`` words) are reported and skipped. ``k`` samples with ``seed``.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise BestshotError(f"image folder not found: {root} — pass a folder of images with .txt captions beside them")
    rows, uncaptioned = [], []
    for img in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        txt = img.with_suffix(".txt")
        caption = _clean(txt.read_text(encoding="utf-8", errors="replace")) if txt.is_file() else ""
        if not caption or _n_words(caption) < min_len:
            uncaptioned.append(str(img.relative_to(root)))
            continue
        rows.append((str(img), caption, str(img.relative_to(root).with_suffix(""))))
    if uncaptioned:
        _report(f"images without a usable caption in {root}", uncaptioned)
    if not rows:
        raise BestshotError(f"no captioned image in {root} — put a caption in name.txt next to each name.png")
    if k is not None and k < len(rows):
        rows = random.Random(seed).sample(rows, k)
    return write_manifest(rows, out_csv)


def check_image(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it can (PIL verify: header and structure)."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() leaves the file unusable; a full decode catches truncation
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"corrupt ({type(e).__name__})"
    return None


def read_manifest(path: str | os.PathLike, check_images: bool = True) -> list[Row]:
    """Read and validate a manifest. Relative image paths are relative to the CSV's folder.

    A malformed CSV (missing columns) is a :class:`BestshotError`; a row with an empty caption or a
    missing / corrupt image is reported in one warning and skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise BestshotError(f"manifest not found: {path} — build one with `bestshot eval manifest`")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing_cols = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing_cols:
            raise BestshotError(
                f"{path} is not a manifest: missing column(s) {', '.join(missing_cols)} "
                f"(found {reader.fieldnames}) — expected a CSV header {','.join(COLUMNS)}"
            )
        raw = list(reader)
    rows, bad = [], []
    for i, r in enumerate(raw):
        img = Path(r["image_path"] or "")
        img = img if img.is_absolute() else path.parent / img
        caption = _clean(r["caption"] or "")
        if not r["image_path"]:
            problem = "empty image_path"
        elif not caption:
            problem = "empty caption"
        else:
            problem = check_image(img) if check_images else None
        if problem:
            bad.append(f"row {i} {img.name}: {problem}")
            continue
        rows.append(Row(i, img, caption, (r["image_id"] or "").strip() or str(i)))
    if bad:
        _report(f"bad manifest rows in {path}", bad)
    return rows
