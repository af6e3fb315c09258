"""Generic (image, caption) datasets for training: caption folders, CSV manifests, Fashion-MNIST.

Every dataset returns ``(image, caption)`` with the image a float CHW tensor in ``[-1, 1]`` at a
fixed square size, the same convention as :class:`bestshot.world.WorldDataset`, so training code
never needs to know where its data came from. :func:`build_dataset` turns a CLI string into one.

Bad files are found at construction (reported as warnings naming the file, then skipped), because a
corrupt image discovered in epoch 7 would kill a long training run.
"""

from __future__ import annotations

import csv
import gzip
import random
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bestshot.errors import BestshotError
from bestshot.world import WorldDataset, image_to_tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# how each label reads inside a sentence ("a photo of a pair of trousers")
_FASHION_NOUNS = (
    "t-shirt",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
_FASHION_TEMPLATES = (
    "a photo of {a} {noun}",
    "{a} {noun}",
    "a picture of {a} {noun}",
    "a black and white photo of {a} {noun}",
    "a product photo of {a} {noun}",
    "{noun}",
)


def load_rgb(path: str | Path, size: int) -> Image.Image:
    """Open any image as RGB (transparency composited on white), centre-cropped square, resized."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        im = im.convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return (
        im if s == size else im.resize((size, size), Image.Resampling.LANCZOS if s > size else Image.Resampling.BICUBIC)
    )


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()  # decode fully: verify() misses truncated data
        return True
    except Exception as err:  # PIL raises many types for bad files
        warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=3)
        return False


def _class_names(root: Path) -> dict[str, str]:
    """Readable class names of an ImageFolder: Tiny ImageNet's ``words.txt`` (``wnid<TAB>name, name``) in the
    folder or its parent maps WordNet ids to their first name; other class folders are named as they are."""
    for d in (root, root.parent):
        words = d / "words.txt"
        if words.is_file():
            names = {}
            for line in words.read_text(encoding="utf-8", errors="replace").splitlines():
                wnid, _, name = line.partition("\t")
                if name.strip():
                    names[wnid.strip()] = name.split(",")[0].strip()
            return names
    return {}


class CaptionFolderDataset(torch.utils.data.Dataset):
    """Images, with or without captions.

    ``root`` is a folder or a CSV manifest:

    - a folder: every image below it (searched recursively); its caption is the ``.txt`` beside it (same
      stem). With ``class_caption`` (e.g. ``"a photo of a {class}"``) an image without one, inside a class
      folder (ImageFolder: ``root/<class>/…/image.png``, as Tiny ImageNet's ``train/<wnid>/images/*.JPEG``),
      is captioned from its class folder's name (Tiny ImageNet ids are read through ``words.txt``);
    - a CSV manifest with a column ``image`` (or ``path``/``file``) and optionally ``caption`` (paths relative
      to the CSV). A folder whose images have no captions but which holds exactly one CSV manifest uses it.

    ``captions="required"`` (training on text) skips images without a caption, with a warning;
    ``"optional"`` (image embeddings, e.g. ``cond: image_embed``) keeps them with the caption ``""``.
    """

    def __init__(
        self, root: str | Path, size: int = 64, check: bool = True, captions: str = "required", class_caption: str = ""
    ):
        root = Path(root).expanduser()
        if captions not in ("required", "optional"):
            raise ValueError(f"captions must be 'required' or 'optional', not {captions!r}")
        if not root.exists():
            raise BestshotError(
                f"dataset {root} does not exist — pass a folder of images (with .txt captions, or "
                f"class folders) or a CSV manifest"
            )
        self.size, self.root = size, root
        required = captions == "required"
        pairs = self._from_csv(root, required) if root.is_file() else self._from_folder(root, required, class_caption)
        if check:
            pairs = [(p, c) for p, c in pairs if _readable(p)]
        if not pairs:
            if required:
                raise BestshotError(
                    f"no readable captioned images in {root} — put a .txt caption beside each image "
                    f"(photo.png + photo.txt), caption class folders with class_caption "
                    f"(e.g. 'a photo of a {{class}}'), or give a CSV manifest with columns image,caption"
                )
            raise BestshotError(
                f"no readable images in {root} — pass a folder of images ({', '.join(IMAGE_EXTENSIONS)}) "
                f"or a CSV manifest with a column image"
            )
        self.items = pairs

    @staticmethod
    def _from_folder(root: Path, required: bool = True, class_caption: str = "") -> list[tuple[Path, str]]:
        images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        names = _class_names(root) if class_caption else {}
        pairs, missing = [], []
        for p in images:
            txt = p.with_suffix(".txt")
            caption = " ".join(txt.read_text(encoding="utf-8", errors="replace").split()) if txt.exists() else ""
            rel = p.relative_to(root).parts
            if not caption and class_caption and len(rel) > 1:
                caption = class_caption.replace("{class}", names.get(rel[0], rel[0].replace("_", " ")))
            if caption or not required:
                pairs.append((p, caption))
            else:
                missing.append(p.name)
        if not any(c for _, c in pairs):  # no caption found: a manifest beside the images describes them
            csvs = sorted(root.glob("*.csv"))
            if len(csvs) == 1:
                return CaptionFolderDataset._from_csv(csvs[0], required)
        if missing:
            warnings.warn(
                f"{len(missing)} image(s) in {root} have no (or an empty) .txt caption and are skipped, "
                f"e.g. {', '.join(missing[:3])}",
                stacklevel=3,
            )
        return pairs

    @staticmethod
    def _from_csv(path: Path, required: bool = True) -> list[tuple[Path, str]]:
        if path.suffix.lower() != ".csv":
            raise BestshotError(
                f"{path} is a file but not a .csv manifest — pass a folder or a CSV with columns image,caption"
            )
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in reader.fieldnames or []]
            col = next((c for c in ("image", "path", "file") if c in fields), None)
            if col is None or (required and "caption" not in fields):
                need = "image,caption" if required else "image (and optionally caption)"
                raise BestshotError(
                    f"{path} needs the columns {need} (found: {', '.join(fields) or 'none'}) — "
                    f"add a header line '{'image,caption' if required else 'image'}'"
                )
            rows = [{k.strip().lower(): (v or "") for k, v in row.items() if k} for row in reader]
        pairs = []
        for n, row in enumerate(rows, start=2):
            img, cap = row[col].strip(), " ".join(row.get("caption", "").split())
            p = (path.parent / img) if img else None
            if p is None or (required and not cap) or not p.is_file():
                warnings.warn(
                    f"{path}:{n}: skipping row (missing image file{' or empty caption' if required else ''}): {img!r}",
                    stacklevel=3,
                )
                continue
            pairs.append((p, cap))
        return pairs

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        path, caption = self.items[i]
        return image_to_tensor(load_rgb(path, self.size)), caption


# ----------------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (gzip or raw): big-endian magic, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    (got,) = struct.unpack(">I", data[:4])
    if got != magic:
        raise BestshotError(
            f"{path} is not an IDX file of the expected kind (magic {got}, want {magic}) — "
            f"reinstall it: apt-get install --reinstall dataset-fashion-mnist"
        )
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise BestshotError(
        f"Fashion-MNIST file {stem}(.gz) missing in {root} — install it: apt-get install dataset-fashion-mnist"
    )


class FashionMNISTDataset(torch.utils.data.Dataset):
    """Fashion-MNIST (Debian's dataset-fashion-mnist) as RGB images captioned from their labels.

    The caption template of item ``i`` is chosen by ``(seed, i)``, so epochs are reproducible.
    """

    def __init__(self, root: str | Path = FASHION_MNIST_ROOT, split: str = "train", size: int = 32, seed: int = 0):
        root = Path(root)
        if split not in ("train", "test"):
            raise BestshotError(f"Fashion-MNIST split must be 'train' or 'test', not {split!r}")
        if not root.is_dir():
            raise BestshotError(
                f"Fashion-MNIST not found in {root} — install it with "
                f"`apt-get install dataset-fashion-mnist` (or pass root=...)"
            )
        prefix = "train" if split == "train" else "t10k"
        self.images = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"), 2051)
        self.labels = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"), 2049).astype(np.int64)
        if len(self.images) != len(self.labels):
            raise BestshotError(
                f"Fashion-MNIST {split} images and labels disagree in length in {root} — reinstall the package"
            )
        self.size, self.seed = size, seed

    def __len__(self) -> int:
        return len(self.labels)

    def caption(self, i: int) -> str:
        noun = _FASHION_NOUNS[int(self.labels[i])]
        template = random.Random(f"fashion-mnist:{self.seed}:{i}").choice(_FASHION_TEMPLATES)
        return template.format(a="an" if noun[0] in "aeiou" else "a", noun=noun)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        im = Image.fromarray(self.images[i], "L")
        if im.size != (self.size, self.size):
            im = im.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return image_to_tensor(im.convert("RGB")), self.caption(i)


# -------------------------------------------------------------------------------------------- build
DEFAULT_WORLD_LENGTH = 100_000


def build_dataset(
    spec: str, size: int, length: int | None = None, seed: int = 0, captions: str = "required", class_caption: str = ""
) -> torch.utils.data.Dataset:
    """Dataset from a CLI string.

    - ``world`` (1-3 objects), ``world:1`` or ``world:1-2`` (object counts): the procedural world,
      ``length`` items (default 100,000; it is unlimited, items are generated on the fly);
    - ``fashion-mnist`` or ``fashion-mnist:test``;
    - a folder of images or a ``.csv`` manifest (see :class:`CaptionFolderDataset` for ``captions``, "required"
      or "optional", and ``class_caption``, e.g. "a photo of a {class}" for class folders).
    For finite datasets ``length`` keeps the first ``length`` items.
    """
    s = spec.strip()
    if s == "world" or s.startswith("world:"):
        lo, hi, parts = 1, 3, [1]
        if ":" in s:
            try:
                parts = [int(x) for x in s.split(":", 1)[1].split("-")]
                lo, hi = parts[0], parts[-1]
            except ValueError:
                lo = hi = -1
            if not (1 <= lo <= hi <= 3 and len(parts) <= 2):
                raise BestshotError(
                    f"bad world dataset {spec!r} — use world, world:1, world:2 or world:1-2 (1 to 3 objects)"
                )
        return WorldDataset(length or DEFAULT_WORLD_LENGTH, size=size, seed=seed, max_objects=hi, min_objects=lo)
    if s.lower() in ("fashion-mnist", "fashion-mnist:train", "fashion-mnist:test", "fashionmnist"):
        ds: torch.utils.data.Dataset = FashionMNISTDataset(
            split="test" if s.lower().endswith(":test") else "train", size=size, seed=seed
        )
    elif Path(s).expanduser().is_dir() or s.lower().endswith(".csv"):
        ds = CaptionFolderDataset(s, size=size, captions=captions, class_caption=class_caption)
    else:
        raise BestshotError(
            f"unknown dataset {spec!r} — use 'world', 'fashion-mnist', a folder of images (.txt "
            f"captions or class folders), or a .csv manifest with columns image[,caption]"
        )
    if length is not None and length < len(ds):
        ds = torch.utils.data.Subset(ds, range(length))
    return ds
