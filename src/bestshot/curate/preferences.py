"""Preference rows from what a person did to a stage-1 curation folder (``bestshot taste collect``).

A stage-1 image whose metadata is still there but whose PNG was deleted is a "delete" row; a survivor is a
"keep" row. The rows go to the output store's preference log (:mod:`bestshot.scoring.taste`), which the
taste head learns from.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BestshotError
from ..scoring.taste import add_preference, latest_verdicts, read_preferences
from .layout import Layout


def collect_stage1(outputs: str | Path, *, source: str = "stage1-folder", now: float | None = None) -> list[dict]:
    """Turn the state of a curation folder into rows; returns only the rows added (idempotent)."""
    layout = Layout(Path(outputs))
    meta_dir = layout.root / "metadata"
    if not meta_dir.is_dir():
        raise BestshotError(f"{meta_dir} does not exist — point --outputs (or --workflow-dir) at a curation "
                            "folder made by `bestshot stage1`")
    latest = latest_verdicts(read_preferences(outputs))
    added = []
    for meta in sorted(meta_dir.glob("*.json")):
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        st = (record.get("stages") or {}).get("stage1") or {}
        rel = st.get("file")
        if not rel or not isinstance(record.get("prompt"), str):
            continue
        verdict = "keep" if (layout.root / rel).is_file() else "delete"
        prev = latest.get(rel)
        if prev is not None and (prev["verdict"] == verdict or (verdict == "keep" and prev["verdict"] == "star")):
            continue
        added.append(add_preference(outputs, record["prompt"], rel, verdict, source=source,
                                    tag=record.get("tag", meta.stem), now=now))
    return added
