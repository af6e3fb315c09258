"""Learn what the user keeps: preference rows from curation, and a small head on image embeddings.

Data. ``bestshot taste collect`` reads a curation folder (``outputs/stage1`` + ``outputs/metadata``, see
:mod:`bestshot.curate.layout`): an image whose metadata exists but whose stage-1 PNG was deleted is a
``delete`` row, a surviving one a ``keep`` row. Rows go to ``outputs/taste/preferences.jsonl`` (one JSON
object a line, appended under a file lock: :func:`bestshot.store.append_jsonl`) as
``{prompt, image, tag, verdict, source, time}``; the latest row of an image wins, and collecting again adds
a row only when an image's verdict changed. ``star`` rows (a stronger keep, from the gallery) are accepted
too, and ``undo`` rows forget an image's earlier verdict.

A deleted PNG cannot be embedded any more, so ``collect`` also embeds every surviving stage-1 image it
has not embedded yet and keeps the vectors in ``outputs/taste/embeddings-<embedder>.npz``: run it once
after ``bestshot stage1`` (before curating) and once after, and every deletion has its embedding.

Head. ``logistic``: ``p(keep | x) = sigmoid(w.x + b)`` over all rows. ``bt`` (Bradley–Terry): for each
kept/deleted pair of the same prompt, ``p(kept beats deleted) = sigmoid(w.(x_kept - x_deleted))``. Both
are fitted with L-BFGS and an L2 penalty, cross-validated with k folds split by prompt (no prompt in both
training and validation), then refitted on everything and saved as ``outputs/taste/head.json``
(atomic write) with the row count, the validation accuracy and the scale of its logits (their mean and
std over the training rows: what an ensemble divides by, :mod:`bestshot.scoring.ensemble`; a head saved
before this has none and the ensemble falls back to its default scale, mean 0 and std 1). Retraining starts from
the saved weights (warm start) when the embedder and dimension match.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import jsonio
from ..errors import BestshotError
from ..store import append_jsonl, atomic_open, disk_error, read_jsonl

VERDICTS = ("keep", "delete", "star")
UNDO = "undo"  # a row that forgets the image's earlier verdict (the gallery's undo, unkeep, unstar)
TASTE_DIR = "taste"
PREFS = "preferences.jsonl"
HEAD = "head.json"
KINDS = ("logistic", "bt")


def taste_dir(outputs: str | Path) -> Path:
    return Path(outputs) / TASTE_DIR


def default_head_path(outputs: str | Path = "outputs") -> Path:
    return taste_dir(outputs) / HEAD


# ---------------------------------------------------------------------------------------------- rows
def add_preference(
    outputs: str | Path,
    prompt: str,
    image: str,
    verdict: str,
    *,
    source: str,
    tag: str | None = None,
    now: float | None = None,
) -> dict:
    """Append one (prompt, image, verdict) row to ``outputs/taste/preferences.jsonl``."""
    if verdict not in VERDICTS + (UNDO,):
        raise BestshotError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS + (UNDO,))}")
    row = {
        "prompt": prompt,
        "image": image,
        "tag": tag,
        "verdict": verdict,
        "source": source,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now if now is not None else time.time())),
    }
    path = taste_dir(outputs) / PREFS
    try:
        append_jsonl(path, row)
    except IsADirectoryError:
        raise BestshotError(f"{path} is a folder, not the preference log — move it away and try again") from None
    except OSError as e:
        raise disk_error(e, f"the preference log {str(path)!r}") from None
    return row


def read_preferences(outputs: str | Path) -> list[dict]:
    """All rows, oldest first (a malformed line is skipped with a warning naming it)."""
    path = taste_dir(outputs) / PREFS
    if path.exists() and not path.is_file():
        raise BestshotError(f"{path} is not a file — move it away; `bestshot taste collect` writes a new one")
    return read_jsonl(path)


def latest_verdicts(rows: Sequence[dict]) -> dict[str, dict]:
    """image → its latest row (an ``undo`` row removes the image)."""
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("verdict") in VERDICTS and r.get("image"):
            out[str(r["image"])] = r
        elif r.get("verdict") == UNDO and r.get("image"):
            out.pop(str(r["image"]), None)
    return out


# ------------------------------------------------------------------------------------------ embeddings
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "scorer"


class EmbeddingCache:
    """image (path relative to outputs) → unit embedding, per embedder, in one ``.npz`` (atomic rewrite)."""

    def __init__(self, outputs: str | Path, embedder: str):
        self.outputs = Path(outputs)
        self.path = taste_dir(outputs) / f"embeddings-{_safe(embedder)}.npz"
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.exists():
            self.vectors = self._load()

    def _damaged(self, why: str) -> BestshotError:
        return BestshotError(
            f"the embedding cache {self.path} is damaged ({why}) — delete it and run "
            "`bestshot taste collect` to embed the images again"
        )

    def _load(self) -> dict[str, np.ndarray]:
        """The cache's vectors, checked: one finite vector of one dimension per image name."""
        import zipfile

        try:
            with np.load(self.path, allow_pickle=False) as z:
                images, vectors = z["images"], z["vectors"]
        except IsADirectoryError:
            raise self._damaged("it is a folder") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise self._damaged(f"{type(e).__name__}: {e}"[:200]) from None
        if images.ndim != 1 or images.dtype.kind not in "US":
            raise self._damaged("its image names are not a list of text")
        if len(images) == 0:
            return {}
        if vectors.ndim != 2 or vectors.dtype.kind not in "fiu" or vectors.shape[1] == 0:
            raise self._damaged(
                f"its vectors have shape {vectors.shape} and type {vectors.dtype}, not one row of numbers per image"
            )
        if len(images) != len(vectors):
            raise self._damaged(f"{len(images)} image names but {len(vectors)} vectors")
        vectors = vectors.astype(np.float32)
        bad = int((~np.isfinite(vectors).all(axis=1)).sum())
        if bad:
            raise self._damaged(f"{bad} of {len(vectors)} vectors hold NaN or infinite values")
        return dict(zip(images.tolist(), vectors))

    @property
    def dim(self) -> int | None:
        return next(iter(self.vectors.values())).shape[0] if self.vectors else None

    def missing(self, images: Sequence[str], locate: Any = None) -> list[tuple[str, Path]]:
        """(image, where its file is) of the images not embedded yet whose file exists; ``locate(image)``
        finds the file (default: ``outputs/IMAGE``)."""
        locate = locate or (lambda p: self.outputs / p if (self.outputs / p).is_file() else None)
        return [(p, f) for p in images if p not in self.vectors for f in [locate(p)] if f is not None]

    def add_missing(self, images: Sequence[str], embed: Any, batch: int = 32, locate: Any = None) -> int:
        """Embed the images not embedded yet; a file that is not a readable image is skipped with a warning.
        Returns how many were embedded."""
        import warnings

        todo = []
        for p, f in self.missing(images, locate):
            try:
                with Image.open(f) as im:
                    im.verify()
                todo.append((p, f))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                warnings.warn(f"skipping {p}: {f} is not a readable image ({type(e).__name__})", stacklevel=2)
        for i in range(0, len(todo), batch):
            chunk = [p for p, _ in todo[i : i + batch]]
            pil = []
            for _, f in todo[i : i + batch]:
                with Image.open(f) as im:
                    pil.append(im.convert("RGB"))
            vecs = embed(pil).float().cpu().numpy()
            if self.dim is not None and vecs.shape[1] != self.dim:
                raise BestshotError(
                    f"the embedder gives {vecs.shape[1]}-d vectors but {self.path} holds {self.dim}-d "
                    "ones — use the --scorer the cache was made with, or delete it to start over"
                )
            if not np.isfinite(vecs).all():
                raise BestshotError("the embedder returned NaN or infinite values — check the --scorer model")
            for p, v in zip(chunk, vecs):
                self.vectors[p] = v.astype(np.float32)
        if todo:
            self.save()
        return len(todo)

    def save(self) -> None:
        keys = sorted(self.vectors)
        with atomic_open(self.path, "wb") as f:
            np.savez(
                f,
                images=np.array(keys, dtype=str),
                vectors=np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32),
            )


def embedder_for(spec: str, device: Any = None) -> Any:
    """The scorer whose ``embed_images`` the head reads (a transformers CLIP: 'embedded', hub id, folder)."""
    from . import get_scorer

    scorer = get_scorer(spec, device=device)
    base = getattr(scorer, "base", scorer)
    if not hasattr(base, "embed_images"):
        raise BestshotError(
            f"scorer {spec!r} has no image embeddings — the taste head needs a CLIP scorer "
            "('embedded', a transformers CLIP hub id or folder)"
        )
    return base


# ------------------------------------------------------------------------------------------------ head
@dataclass
class TasteHead:
    kind: str
    embedder: str
    w: np.ndarray
    b: float = 0.0
    info: dict = field(default_factory=dict)

    def logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return x.astype(np.float32) @ self.w.astype(np.float32) + np.float32(self.b)

    def to_dict(self) -> dict:
        return {
            "format": "bestshot-taste-head",
            "version": 1,
            "kind": self.kind,
            "embedder": self.embedder,
            "dim": int(self.w.shape[0]),
            "w": [float(v) for v in self.w],
            "b": float(self.b),
            **self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Write the head beside ``path`` (a hidden temp file), read it back and check it, then rename it over
        ``path``: an invalid head (NaN or overflowing weights...) is refused and the old file stays as it was."""
        path = Path(path)
        if path.exists() and not path.is_file():
            raise BestshotError(f"{path} is a folder, not a head file — move it away or give --out FILE")
        self.check(str(path))
        text = jsonio.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        try:
            with atomic_open(path, "w", encoding="utf-8") as f:
                f.write(text)
                TasteHead.from_dict(json.loads(text), str(path))  # what is on disk reads back as a valid head
        except OSError as e:
            raise disk_error(e, f"the taste head {str(path)!r}") from None
        return path

    def check(self, where: str = "the taste head") -> TasteHead:
        """One clear error for a head no scorer can use: unknown kind, no weights, NaN or overflowing values."""
        if self.kind not in KINDS:
            raise BestshotError(
                f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)} — retrain it with `bestshot taste train`"
            )
        if not isinstance(self.embedder, str) or not self.embedder:
            raise BestshotError(f"{where}: it names no embedder — retrain it with `bestshot taste train`")
        if self.w.ndim != 1 or self.w.shape[0] == 0:
            raise BestshotError(f"{where}: its weights are not a non-empty list of numbers — retrain it")
        with np.errstate(over="ignore", invalid="ignore"):
            w = self.w.astype(np.float32)
            worst = float(np.abs(w).sum()) + abs(float(self.b)) if np.isfinite(w).all() else math.inf
        if not math.isfinite(worst) or not math.isfinite(float(self.b)) or worst > 1e30:
            raise BestshotError(
                f"{where}: its weights hold NaN, infinite or overflowing values — the embedding cache "
                "it was trained on may be damaged; retrain with `bestshot taste train --fresh`"
            )
        return self

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TasteHead:
        if not isinstance(d, dict):
            raise BestshotError(
                f"{where} is not a taste head (not a JSON object) — retrain it with `bestshot taste train`"
            )
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                w = np.asarray(d["w"], dtype=np.float64)
            kind, embedder, b = d["kind"], d["embedder"], d.get("b", 0.0)
            if b is None or isinstance(b, bool) or not isinstance(b, (int, float)):
                raise TypeError(f"b is {b!r}, not a number")
            b = float(b)
        except (ValueError, KeyError, TypeError) as e:
            raise BestshotError(
                f"{where} is not a taste head ({type(e).__name__}: {e}"[:300]
                + ") — retrain it with `bestshot taste train`"
            ) from None
        if w.ndim == 1 and "dim" in d and d["dim"] != w.shape[0]:
            raise BestshotError(
                f"{where}: dim {d['dim']!r} but {w.shape[0]} weights — retrain it with `bestshot taste train`"
            )
        info = {k: v for k, v in d.items() if k not in ("format", "version", "kind", "embedder", "dim", "w", "b")}
        head = cls(kind, embedder, w, b, info).check(where)
        head.w = head.w.astype(np.float32)
        return head

    @classmethod
    def load(cls, path: str | Path) -> TasteHead:
        path = Path(path)
        if path.exists() and not path.is_file():
            raise BestshotError(f"{path} is a folder, not a taste head — name the head file with taste@PATH")
        if not path.is_file():
            raise BestshotError(
                f"no taste head at {path} — run `bestshot taste collect` and `bestshot taste train` "
                "first, or name the head file with taste@PATH"
            )
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BestshotError(
                f"{path} is not a taste head ({type(e).__name__}) — retrain it with `bestshot taste train`"
            ) from None
        return cls.from_dict(d, str(path))


def _fit(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    *,
    bias: bool,
    l2: float,
    init: tuple[np.ndarray, float] | None,
    steps: int = 100,
) -> tuple[np.ndarray, float]:
    """Weighted logistic regression by L-BFGS (also Bradley–Terry when ``x`` are differences, no bias)."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    if init is not None:
        with torch.no_grad():
            w.copy_(torch.as_tensor(init[0], dtype=torch.float64))
            b.fill_(float(init[1]) if bias else 0.0)
    params = [w, b] if bias else [w]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    x, y, weight = x.double(), y.double(), weight.double()

    def closure():
        opt.zero_grad()
        z = x @ w + (b if bias else 0.0)
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none") * weight
        ).sum() / weight.sum()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().astype(np.float32), float(b.detach()) if bias else 0.0


@dataclass
class Dataset:
    x: np.ndarray  # (n, d) embeddings
    y: np.ndarray  # (n,) 1 keep/star, 0 delete
    weight: np.ndarray  # star rows count twice
    prompts: list[str]
    skipped: int = 0  # rows without an embedding


def dataset(outputs: str | Path, embedder: str) -> Dataset:
    rows = list(latest_verdicts(read_preferences(outputs)).values())
    cache = EmbeddingCache(outputs, embedder)
    xs, ys, ws, ps, skipped = [], [], [], [], 0
    for r in rows:
        v = cache.vectors.get(str(r["image"]))
        if v is None:
            skipped += 1
            continue
        xs.append(v)
        ys.append(0.0 if r["verdict"] == "delete" else 1.0)
        ws.append(2.0 if r["verdict"] == "star" else 1.0)
        ps.append(str(r.get("prompt", "")))
    d = xs[0].shape[0] if xs else 0
    return Dataset(
        np.stack(xs) if xs else np.zeros((0, d), np.float32),
        np.asarray(ys, np.float32),
        np.asarray(ws, np.float32),
        ps,
        skipped,
    )


def _pairs(y: np.ndarray, prompts: Sequence[str], idx: np.ndarray) -> list[tuple[int, int]]:
    """(kept, deleted) index pairs of the same prompt among ``idx``."""
    by: dict[str, tuple[list[int], list[int]]] = {}
    for i in idx:
        by.setdefault(prompts[i], ([], []))[0 if y[i] > 0.5 else 1].append(int(i))
    return [(k, d) for kept, deleted in by.values() for k in kept for d in deleted]


def _fit_kind(ds: Dataset, idx: np.ndarray, kind: str, l2: float, init) -> tuple[np.ndarray, float] | None:
    x = torch.as_tensor(ds.x)
    if kind == "logistic":
        if len(set(ds.y[idx].tolist())) < 2:
            return None
        return _fit(x[idx], torch.as_tensor(ds.y[idx]), torch.as_tensor(ds.weight[idx]), bias=True, l2=l2, init=init)
    pairs = _pairs(ds.y, ds.prompts, idx)
    if not pairs:
        return None
    k, d = (torch.as_tensor(v) for v in zip(*pairs))
    diff = x[k] - x[d]
    # both orders, so the fit is symmetric and has no bias to learn
    xx = torch.cat([diff, -diff])
    yy = torch.cat([torch.ones(len(pairs)), torch.zeros(len(pairs))])
    return _fit(xx, yy, torch.ones(len(yy)), bias=False, l2=l2, init=init)


def _accuracy(ds: Dataset, idx: np.ndarray, kind: str, w: np.ndarray, b: float) -> tuple[int, int]:
    z = ds.x @ w + b
    if kind == "logistic":
        return int(((z[idx] > 0) == (ds.y[idx] > 0.5)).sum()), len(idx)
    pairs = _pairs(ds.y, ds.prompts, idx)
    return sum(1 for k, d in pairs if z[k] > z[d]), len(pairs)


def prompt_folds(prompts: Sequence[str], k: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices in ``k`` folds, every prompt's rows in one fold."""
    uniq = sorted(set(prompts))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    fold_of = {uniq[j]: n % k for n, j in enumerate(order)}
    folds = [np.asarray([i for i, p in enumerate(prompts) if fold_of[p] == f], dtype=np.int64) for f in range(k)]
    return [f for f in folds if len(f)]


def train_head(
    ds: Dataset,
    *,
    kind: str = "logistic",
    embedder: str = "embedded",
    folds: int = 5,
    l2: float = 1e-3,
    warm: TasteHead | None = None,
    seed: int = 0,
    balanced: bool = False,
) -> TasteHead:
    """k-fold cross-validate, then fit on all rows; ``warm`` (same embedder and dimension) is the start point.

    ``balanced`` (logistic): rows are reweighted so kept and deleted weigh the same in total — a curation that
    deletes most images otherwise teaches a head that mostly says "delete". ``info`` also gives
    ``majority_rate``, the accuracy of always answering the commoner verdict, to read ``cv_accuracy`` against."""
    if kind not in KINDS:
        raise BestshotError(f"unknown head kind {kind!r} — use one of {', '.join(KINDS)}")
    n_keep, n_del = int((ds.y > 0.5).sum()), int((ds.y <= 0.5).sum())
    if n_keep == 0 or n_del == 0:
        raise BestshotError(
            f"the taste head needs kept AND deleted images with embeddings (have {n_keep} kept, "
            f"{n_del} deleted, {ds.skipped} rows without an embedding) — curate more, and run "
            "`bestshot taste collect` before deleting so the deleted images get embedded"
        )
    if balanced:
        pos = ds.y > 0.5
        scale = np.where(pos, len(ds.y) / (2.0 * n_keep), len(ds.y) / (2.0 * n_del)).astype(np.float32)
        ds = Dataset(ds.x, ds.y, ds.weight * scale, ds.prompts, ds.skipped)
    init = None
    if warm is not None and warm.embedder == embedder and warm.w.shape[0] == ds.x.shape[1] and warm.kind == kind:
        init = (warm.w, warm.b)
    all_idx = np.arange(len(ds.y))
    right = total = 0
    split = prompt_folds(ds.prompts, max(2, folds), seed) if folds >= 2 else []
    for val in split if len(split) >= 2 else []:
        tr = np.setdiff1d(all_idx, val)
        fit = _fit_kind(ds, tr, kind, l2, init)
        if fit is None:
            continue
        r, t = _accuracy(ds, val, kind, *fit)
        right, total = right + r, total + t
    fit = _fit_kind(ds, all_idx, kind, l2, init)
    if fit is None:
        raise BestshotError(
            "no kept/deleted pair shares a prompt — the Bradley–Terry head needs both verdicts for "
            "one prompt; use --kind logistic"
        )
    w, b = fit
    if not (np.isfinite(w).all() and math.isfinite(b)):
        raise BestshotError(
            "training the taste head diverged (NaN weights) — check the embedding cache, or retrain with a larger --l2"
        )
    z = ds.x @ w + b
    info = {
        "logit_mean": float(z.mean()),
        "logit_std": float(z.std()),
        "rows": int(len(ds.y)),
        "kept": n_keep,
        "deleted": n_del,
        "skipped_rows": ds.skipped,
        "pairs": len(_pairs(ds.y, ds.prompts, all_idx)),
        "folds": len(split),
        "cv_accuracy": (right / total) if total else None,
        "cv_count": total,
        "l2": l2,
        "majority_rate": max(n_keep, n_del) / len(ds.y),
        "balanced": bool(balanced),
        "warm_start": init is not None,
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return TasteHead(kind, embedder, w, b, info)


# --------------------------------------------------------------------------------------------- scorer
class TasteScorer:
    """Scores images by the learned head (the prompt is not read: taste is what the prompt does not say)."""

    units, score_range, default_min = "taste logit", None, None  # a preference, not prompt alignment: no gate

    def __init__(self, head: TasteHead, embedder: Any, name: str = "taste"):
        self.head = head
        self.embedder = embedder
        self.name = name

    def truncate(self, text: str) -> tuple[str, bool]:
        return text, False

    @property
    def scale(self) -> Any:
        """The mean/std of the head's logits on its training rows (``None`` for a head saved without them)."""
        from .ensemble import Scale

        try:
            s = Scale(float(self.head.info["logit_mean"]), float(self.head.info["logit_std"]), "taste head")
        except (KeyError, TypeError, ValueError):
            return None
        return s if s.valid() else None

    def score(self, images: Sequence[Image.Image], text: str | Sequence[str]) -> list[float]:
        if not images:
            return []
        if not isinstance(text, str) and len(text) != len(images):
            raise BestshotError(f"got {len(images)} images but {len(text)} texts — give one text, or one per image")
        emb = self.embedder.embed_images(list(images))
        if emb.shape[1] != self.head.w.shape[0]:
            raise BestshotError(
                f"the taste head expects {self.head.w.shape[0]}-d embeddings of {self.head.embedder!r} "
                f"but got {emb.shape[1]}-d — retrain it with `bestshot taste train`"
            )
        scores = [float(v) for v in self.head.logits(emb)]
        if not all(math.isfinite(v) for v in scores):
            raise BestshotError(
                f"the taste head ({self.name}) gave NaN or infinite scores — retrain it with "
                "`bestshot taste train --fresh`"
            )
        return scores


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))
