"""Pluggable image feature extractors for FID / KID / IS / CMMD, and a cache for their outputs.

Metrics are only comparable when the feature extractor and the resize are the same, so every extractor
carries a ``name`` and a ``resize`` string that end up next to every number it produces.

* :class:`InceptionExtractor` — the standard FID Inception (``pt_inception-2015-12-05`` weights, the file
  pytorch-fid, torchmetrics and torch-fidelity use), via torch-fidelity's ``FeatureExtractorInceptionV3``,
  from a user-supplied weights file. Only these numbers are comparable with published FID. The network's
  modules need only torch, but torch-fidelity's package ``__init__`` imports torchvision (and, installed
  without it, breaks torchmetrics' image metrics too). So scripts/install.sh puts torch-fidelity in a private
  folder (requirements/vendor.in) and :func:`_fidelity_inception_class` imports just the network from there;
  a torch-fidelity installed the normal way (the ``fid`` extra, with torchvision) is used as it is.
* :class:`ClipExtractor` — a transformers ``CLIPModel`` image tower (the embedded model's CLIP works
  offline). Its FID/KID are useful for comparing our own runs, never with published figures.

:func:`cached_features` stores features per (dataset content, extractor, resize, count) so evaluating a
new set of generated images does not recompute the reference set; :func:`save_fid_stats` /
:func:`load_fid_stats` keep a reference as FID statistics (``.npz`` with ``mu`` and ``sigma``, the files
clean-fid and pytorch-fid write and read), so a 30k-image reference is computed once.

Resize. By default (``resize="clean"``) every extractor resizes as clean-fid's "clean" mode does (Parmar et
al. 2022, "On Aliased Resizing and Surprising Subtleties in GAN Evaluation"): PIL bicubic, which
antialiases when shrinking, on each channel in float32 (no rounding to 8 bits before the network).
``resize="legacy"`` keeps the previous behaviour: torch-fidelity's TF1-compatible bilinear resize inside the
Inception (the original TensorFlow FID, no antialias), the CLIP processor's 8-bit PIL resize for CLIP.
The mode is part of every extractor's ``resize`` string, printed next to every FID figure and part of the
feature-cache key: numbers from different modes are not comparable.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from bestshot.errors import BestshotError
from bestshot.store import open_rgb

ImageLike = str | os.PathLike | Image.Image

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
EMBEDDED_CLIP_DIR = Path(__file__).resolve().parents[1] / "models" / "embedded" / "clip"


@runtime_checkable
class FeatureExtractor(Protocol):
    """What metrics need from a feature network.

    ``features`` returns one row of pool features per image (FID/KID/CMMD). An extractor with class
    outputs may also define ``logits(images) -> np.ndarray`` (Inception Score needs it).
    """

    name: str
    resize: str

    def features(self, images: list[Image.Image]) -> np.ndarray: ...


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


RESIZE_MODES = ("clean", "legacy")


def clean_resize(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """clean-fid's "clean" resize: each channel as a float32 PIL image, bicubic (antialiased when shrinking)
    to ``size`` = (width, height); returns an (H, W, 3) float32 array in [0, 255], not rounded."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    if (arr.shape[1], arr.shape[0]) == tuple(size):
        return arr
    chans = [
        np.asarray(Image.fromarray(arr[..., c], mode="F").resize(size, resample=Image.BICUBIC), dtype=np.float32)
        for c in range(3)
    ]
    return np.clip(np.stack(chans, axis=-1), 0, 255)


def _check_resize(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise BestshotError(f"unknown resize {mode!r} — use clean (clean-fid, the default) or legacy")
    return mode


def iter_batches(items: Sequence[ImageLike], batch_size: int) -> Iterator[list[Image.Image]]:
    """Open images lazily, ``batch_size`` at a time, so a 10k-image set never sits in memory at once."""
    for i in range(0, len(items), batch_size):
        yield [open_rgb(x) for x in items[i : i + batch_size]]


VENDOR_DIR = Path(sys.prefix) / "share" / "bestshot" / "vendor"  # scripts/install.sh, requirements/vendor.in


def _fidelity_inception_class(vendor_dir: Path | None = None) -> type:
    """torch-fidelity's ``FeatureExtractorInceptionV3``: from a normal install (the ``fid`` extra), else from
    the private copy scripts/install.sh makes.

    From the private copy, ``torch_fidelity`` is registered as a bare package (its ``__init__``, which
    imports torchvision for other extractors, is not run) and only the network's modules are imported.
    """
    import importlib
    import importlib.util
    import types

    if "torch_fidelity" in sys.modules or importlib.util.find_spec("torch_fidelity") is not None:
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as e:
            raise BestshotError(
                f"torch-fidelity is installed but does not import ({e}) — install the torchvision build that "
                "matches your torch, or uninstall torch-fidelity (bestshot's install keeps its own copy)"
            ) from None
        return FeatureExtractorInceptionV3
    folder = Path(vendor_dir or VENDOR_DIR) / "torch_fidelity"
    if not (folder / "feature_extractor_inceptionv3.py").is_file():
        raise BestshotError(
            f"the FID Inception needs torch-fidelity, not found (looked in {folder.parent}) — run "
            "scripts/install.sh, or `pip install 'bestshot[fid]'` with the torchvision build that matches "
            "your torch, or use --extractor clip"
        )
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [str(folder)]
    package.__spec__ = importlib.util.spec_from_file_location(
        "torch_fidelity", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    sys.modules["torch_fidelity"] = package
    return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3").FeatureExtractorInceptionV3


class InceptionExtractor:
    """The FID Inception-v3 of pytorch-fid / torchmetrics / torch-fidelity, from a local weights file.

    Pool features are the 2048-d ``pool3`` output; logits are torch-fidelity's ``logits_unbiased``
    (what its Inception Score uses). Images are resized inside the network to 299x299 with the
    TF1-compatible bilinear resize of the original TensorFlow FID code, aspect ratio not kept.
    """

    LEGACY_RESIZE = "legacy: any size -> 299x299 bilinear, TF1-compatible (torch-fidelity), aspect ratio not kept"
    CLEAN_RESIZE = (
        "clean: any size -> 299x299 PIL bicubic with antialias per float32 channel (clean-fid), "
        "rounded to uint8 for the network, aspect ratio not kept"
    )

    def __init__(
        self,
        weights_path: str | os.PathLike | None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        resize: str = "clean",
    ) -> None:
        self.resize_mode = _check_resize(resize)
        self.resize = self.CLEAN_RESIZE if resize == "clean" else self.LEGACY_RESIZE
        path = Path(weights_path) if weights_path else None
        if path is None or not path.is_file():
            raise BestshotError(
                f"FID Inception weights not found{f' at {path}' if path else ''} — download {FID_WEIGHTS_FILE} "
                f"(from {FID_WEIGHTS_URL}; the same file torch-fidelity/torchmetrics fetch) and pass it with "
                "--inception-weights PATH, or use --extractor clip (offline, not comparable with published FID)"
            )
        FeatureExtractorInceptionV3 = _fidelity_inception_class()
        self.device = _device(device)
        self.batch_size = batch_size
        self.name = f"inception-v3-fid ({path.name}, torch-fidelity)"
        try:
            self.model = (
                FeatureExtractorInceptionV3(
                    "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
                )
                .to(self.device)
                .eval()
            )
        except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise BestshotError(
                f"{path} is not the FID Inception's weights ({first}) — pass {FID_WEIGHTS_FILE}"
            ) from None

    @torch.no_grad()
    def features_and_logits(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass for both outputs. Images of different sizes go through one at a time
        (the network resizes each to 299x299 itself); same-size neighbours are batched."""
        feats, logits = [], []
        if self.resize_mode == "clean":  # every image 299x299 in float: the network's own resize is then a no-op
            size = (self.model.INPUT_IMAGE_SIZE,) * 2
            for i in range(0, len(images), self.batch_size):
                # torch-fidelity's network takes uint8, so the float resize is rounded once, at the end
                arr = np.stack(
                    [np.round(clean_resize(im, size)).astype(np.uint8) for im in images[i : i + self.batch_size]]
                )
                x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(self.device)
                f, lg = self.model(x)
                feats.append(f.float().cpu().numpy())
                logits.append(lg.float().cpu().numpy())
            return np.concatenate(feats), np.concatenate(logits)
        i = 0
        while i < len(images):
            j = i + 1
            while j < len(images) and j - i < self.batch_size and images[j].size == images[i].size:
                j += 1
            arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images[i:j]])
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(self.device)
            f, lg = self.model(x)
            feats.append(f.float().cpu().numpy())
            logits.append(lg.float().cpu().numpy())
            i = j
        return np.concatenate(feats), np.concatenate(logits)

    def features(self, images: list[Image.Image]) -> np.ndarray:
        return self.features_and_logits(images)[0]

    def logits(self, images: list[Image.Image]) -> np.ndarray:
        return self.features_and_logits(images)[1]


class ClipExtractor:
    """A transformers ``CLIPModel``: image embeddings as features, text embeddings for CLIP score.

    ``clip`` is a folder saved with ``save_pretrained`` (default: the embedded model's CLIP) or a loaded
    ``CLIPModel``. Preprocessing is the CLIP processor of that folder, or the standard CLIP one (shortest
    side to the model's image size, bicubic, centre crop) when the folder has none. The tokenizer is the
    folder's, else the real CLIP BPE vocabulary bundled offline.
    """

    def __init__(
        self,
        clip: str | os.PathLike | torch.nn.Module | None = None,
        processor=None,
        tokenizer=None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        resize: str = "clean",
    ) -> None:
        from transformers import CLIPModel
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        self.device = _device(device)
        self.batch_size = batch_size
        self.folder: Path | None = None
        if isinstance(clip, torch.nn.Module):
            model = clip
            label = getattr(model.config, "_name_or_path", "") or "in-memory"
        else:
            folder = Path(clip) if clip is not None else EMBEDDED_CLIP_DIR
            if not (folder / "config.json").is_file():
                raise BestshotError(
                    f"no CLIP model at {folder} (config.json missing) — pass a folder saved with "
                    "CLIPModel.save_pretrained, or reinstall bestshot for the embedded CLIP"
                )
            model = CLIPModel.from_pretrained(folder)
            self.folder, label = folder, folder.name
        self.model = model.to(self.device).eval()
        size = int(self.model.config.vision_config.image_size)
        if processor is None:
            if self.folder is not None and (self.folder / "preprocessor_config.json").is_file():
                processor = CLIPImageProcessorPil.from_pretrained(self.folder)
            else:
                processor = CLIPImageProcessorPil(
                    size={"shortest_edge": size}, crop_size={"height": size, "width": size}
                )
        self.processor = processor
        self._tokenizer = tokenizer
        self.name = f"clip-image-embeds:{label} (NOT comparable with published FID)"
        self.resize_mode = _check_resize(resize)
        self.size = size
        if resize == "clean":
            self.resize = (
                f"clean: shortest side -> {size} PIL bicubic with antialias per float32 channel (clean-fid) "
                f"+ centre crop {size}x{size}, the CLIP processor's mean/std"
            )
        else:
            self.resize = f"legacy: shortest side -> {size} bicubic + centre crop {size}x{size} (CLIP processor, 8-bit)"

    @staticmethod
    def _embeds(out) -> torch.Tensor:
        # transformers 4.x returns a tensor, 5.x a model output whose pooler_output is the projection
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def features(self, images: list[Image.Image]) -> np.ndarray:
        """Projected image embeddings (``image_embeds``), not normalised."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[i : i + self.batch_size]]
            px = (
                self._clean_pixels(batch)
                if self.resize_mode == "clean"
                else self.processor(images=batch, return_tensors="pt")["pixel_values"]
            )
            emb = self._embeds(self.model.get_image_features(pixel_values=px.to(self.device, self.model.dtype)))
            out.append(emb.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)

    def _clean_pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """clean-fid resize of the short side to the CLIP's size, centre crop, the processor's normalisation."""
        s = self.size
        out = []
        for im in images:
            w, h = im.size
            size = (s, max(s, round(h * s / w))) if w <= h else (max(s, round(w * s / h)), s)
            arr = clean_resize(im, size)
            top, left = (arr.shape[0] - s) // 2, (arr.shape[1] - s) // 2
            out.append(arr[top : top + s, left : left + s])
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(getattr(self.processor, "image_mean", None) or [0.48145466, 0.4578275, 0.40821073])
        std = torch.tensor(getattr(self.processor, "image_std", None) or [0.26862954, 0.26130258, 0.27577711])
        return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.folder is not None and (self.folder / "vocab.json").is_file():
                from transformers import CLIPTokenizer

                self._tokenizer = CLIPTokenizer.from_pretrained(self.folder)
            else:
                from bestshot.models.clip_tokenizer import build_clip_tokenizer

                self._tokenizer = build_clip_tokenizer(self.model.config.text_config.max_position_embeddings)
        return self._tokenizer

    @torch.no_grad()
    def text_features(self, captions: list[str]) -> np.ndarray:
        """Projected text embeddings (``text_embeds``); captions longer than the context are truncated."""
        out = []
        max_len = int(self.model.config.text_config.max_position_embeddings)
        for i in range(0, len(captions), self.batch_size):
            tok = self.tokenizer(
                list(captions[i : i + self.batch_size]),
                padding="max_length",
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            emb = self._embeds(
                self.model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
                )
            )
            out.append(emb.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)


def extract(extractor: FeatureExtractor, items: Sequence[ImageLike], batch_size: int = 32) -> np.ndarray:
    """Features of paths or PIL images, opening files ``batch_size`` at a time."""
    if len(items) == 0:
        raise BestshotError("empty image set — point the evaluation at a folder or manifest with images")
    if hasattr(extractor, "extract_items"):  # distributed (bestshot.scale.features): workers open the files
        return extractor.extract_items(items, batch_size)
    return np.concatenate([extractor.features(b) for b in iter_batches(items, batch_size)])


def content_hash(items: Sequence[ImageLike]) -> str:
    """Identity of an image set: resolved path + size + mtime per file (cheap, catches regenerated
    files), pixel bytes for in-memory images. Order matters, like it does for the features."""
    h = hashlib.sha256()
    for x in items:
        if isinstance(x, Image.Image):
            h.update(f"pil:{x.mode}:{x.size}:".encode())
            h.update(x.tobytes())
        else:
            p = Path(x).resolve()
            try:
                st = p.stat()
            except OSError as e:
                raise BestshotError(f"cannot read image {p} ({e}) — remove it from the set") from e
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _slug(s: str, n: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-")[:n] or "x"


def cached_features(
    extractor: FeatureExtractor,
    dataset_key: str,
    images_or_paths: Sequence[ImageLike],
    cache_dir: str | os.PathLike,
    batch_size: int = 32,
) -> np.ndarray:
    """``extract`` with an on-disk cache keyed by (dataset content, extractor name, resize, count).

    ``dataset_key`` is a readable label for the file name (e.g. ``coco-train1k``); the key itself is the
    content hash, so a changed file or a different extractor never reuses stale features.
    """
    key = hashlib.sha256(
        "\n".join([content_hash(images_or_paths), extractor.name, extractor.resize, str(len(images_or_paths))]).encode()
    ).hexdigest()
    cache = Path(cache_dir)
    path = cache / f"{_slug(dataset_key)}__{_slug(extractor.name)}__{key[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return z["features"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: recompute and overwrite
    feats = extract(extractor, images_or_paths, batch_size)
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                features=feats,
                key=np.array(key),
                extractor=np.array(extractor.name),
                resize=np.array(extractor.resize),
                n=np.array(len(images_or_paths)),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return feats


# ------------------------------------------------------------------------------------ FID statistics
def fid_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a feature set, float64, sigma with the unbiased covariance (as pytorch-fid / clean-fid)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise BestshotError(f"FID statistics need at least 2 feature rows, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def save_fid_stats(
    path: str | os.PathLike,
    features: np.ndarray | None = None,
    *,
    mu: np.ndarray | None = None,
    sigma: np.ndarray | None = None,
    extractor: str = "",
    resize: str = "",
) -> Path:
    """Write FID statistics as clean-fid / pytorch-fid do (``np.savez`` with ``mu`` and ``sigma``), plus what
    made them (``extractor``, ``resize``, ``n``), atomically."""
    if features is not None:
        mu, sigma = fid_stats(features)
    if mu is None or sigma is None:
        raise ValueError("give features, or mu and sigma")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                mu=np.asarray(mu, np.float64),
                sigma=np.asarray(sigma, np.float64),
                extractor=np.array(extractor),
                resize=np.array(resize),
                n=np.array(-1 if features is None else len(features)),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_fid_stats(path: str | os.PathLike) -> dict:
    """``{"mu", "sigma", "extractor", "resize", "n"}`` from an ``.npz`` with ``mu`` and ``sigma`` (ours, clean-fid's
    or pytorch-fid's; the last three are ``None`` when the file does not record them)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "mu" not in z or "sigma" not in z:
                raise BestshotError(
                    f"{path} holds {sorted(z.files)}, not FID statistics — it needs arrays mu and sigma "
                    "(as clean-fid and pytorch-fid write them)"
                )
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
            meta = {k: (z[k].item() if k in z else None) for k in ("extractor", "resize", "n")}
    except (OSError, ValueError, EOFError) as e:
        raise BestshotError(f"cannot read FID statistics {path} ({e}) — pass an .npz with mu and sigma") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise BestshotError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit (want (d,) and (d, d))")
    return {"mu": mu, "sigma": sigma, **{k: (v or None) if isinstance(v, str) else v for k, v in meta.items()}}
