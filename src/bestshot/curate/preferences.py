"""Preference rows from what a person did to a stage-1 curation folder (``bestshot taste collect``).

A stage-1 image whose metadata is still there but whose PNG was deleted is a "delete" row; a survivor is a
"keep" row. The gallery of ``bestshot serve`` moves a deleted image and its metadata to ``outputs/trash/``;
such an image is a "delete" row too (its metadata is read from ``trash/``, and ``collect`` embeds the PNG
that waits there). The gallery also records its verdicts as they happen (:func:`record_verdict`: keep,
delete, star, and ``undo``, which forgets the image's earlier verdict). The rows go to the output store's
preference log (:mod:`bestshot.scoring.taste`), which the taste head learns from.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..errors import BestshotError
from ..scoring.taste import UNDO, VERDICTS, add_preference, latest_verdicts, read_preferences
from .layout import Layout, metadata_names, tag_of

TRASH = "trash"


def _metadata_files(root: Path) -> list[Path]:
    """Stage-1 metadata: ``metadata/*.json``, and ``trash/*.json`` (what the gallery deleted)."""
    return sorted((root / "metadata").glob("*.json")) + sorted((root / TRASH).glob("*.json"))


def image_location(outputs: str | Path, image: str) -> Path | None:
    """Where the PNG of a row's image is now: ``outputs/IMAGE``, else the gallery's trash, else None."""
    root = Path(outputs)
    try:
        for p in (root / image, root / TRASH / Path(image).name):
            if p.is_file():
                return p
    except (ValueError, OSError):  # a name no file can have (a NUL byte, too long)
        return None
    return None


def record_verdict(
    outputs: str | Path, name: str, verdict: str, *, source: str = "gallery", now: float | None = None
) -> dict:
    """One gallery verdict on ``stage1/NAME`` as a preference row (the same row ``collect`` writes).

    ``verdict`` is keep, delete, star or ``undo`` (forget the earlier verdict). The prompt and tag come from
    the image's metadata (``metadata/{tag}.json`` as stage 1 writes it, or ``trash/`` after a delete); an
    image without metadata gets an empty prompt (``collect`` repairs the row once the metadata is there).
    """
    if verdict not in VERDICTS + (UNDO,):
        raise BestshotError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS + (UNDO,))}")
    root = Path(outputs)
    record: dict = {}
    for meta in [root / folder / m for folder in ("metadata", TRASH) for m in metadata_names(name)]:
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            record = data
            break
    prompt = record.get("prompt") if isinstance(record.get("prompt"), str) else ""
    tag = record.get("tag") if isinstance(record.get("tag"), str) else tag_of(name)
    return add_preference(root, prompt, f"stage1/{name}", verdict, source=source, tag=tag, now=now)


def collect_stage1(outputs: str | Path, *, source: str = "stage1-folder", now: float | None = None) -> list[dict]:
    """Turn the state of a curation folder into rows; returns only the rows added (idempotent).

    A row whose verdict still holds but which was logged with an empty prompt (its metadata was not found
    then) is written again with the prompt, so the taste head learns from it."""
    layout = Layout(Path(outputs))
    meta_dir = layout.root / "metadata"
    if not meta_dir.is_dir() and not (layout.root / TRASH).is_dir():
        raise BestshotError(
            f"{meta_dir} does not exist — point --outputs (or --workflow-dir) at a curation "
            "folder made by `bestshot stage1`"
        )
    latest = latest_verdicts(read_preferences(outputs))
    added = []
    for meta in _metadata_files(layout.root):
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            warnings.warn(f"skipping {meta}: not readable JSON")
            continue
        stages = record.get("stages") if isinstance(record, dict) else None
        st = stages.get("stage1") if isinstance(stages, dict) else None
        rel = st.get("file") if isinstance(st, dict) else None
        if not isinstance(record, dict):
            warnings.warn(f"skipping {meta}: not a JSON object")
            continue
        if not isinstance(rel, str) or not rel or "\x00" in rel or not isinstance(record.get("prompt"), str):
            continue
        tag = record.get("tag") if isinstance(record.get("tag"), str) else meta.stem
        verdict = "keep" if (layout.root / rel).is_file() else "delete"
        prev = latest.get(rel)
        if prev is not None and (prev["verdict"] == verdict or (verdict == "keep" and prev["verdict"] == "star")):
            if prev.get("prompt") or not record["prompt"]:
                continue
            verdict = prev["verdict"]  # the same verdict, logged without its prompt: repaired (a star stays one)
        added.append(add_preference(outputs, record["prompt"], rel, verdict, source=source, tag=tag, now=now))
    return added
