"""The gallery's side of the curation workflow, on its documented folder layout::

    outputs/stage1/TAG_stage1_WxH.png   stage-1 candidates waiting for a human
    outputs/metadata/TAG.json           their metadata (written by ``bestshot stage1``; NAME.json for an image
                                        NAME.png that is not named by a tag is read too)
    outputs/final/                      upscaled survivors (written by bestshot.curate)
    outputs/trash/                      what the gallery deleted (PNG + its metadata), so delete is undoable
    outputs/curation.json               the gallery's marks: {"kept": [NAME.png, ...], "starred": [...]}
    outputs/taste/preferences.jsonl     every verdict as a preference row (bestshot.curate.preferences)

Deleting moves files (``os.replace``, atomic on one file system) instead of unlinking, and undo moves
them back. Each keep / delete / star (and undo, unkeep, unstar) also appends a (prompt, image, verdict)
row to the preference log, the rows ``bestshot taste collect`` makes from a curated folder, so
``bestshot taste train`` learns from the gallery too. A star is a stronger keep (it marks the image kept).
The upscale itself belongs to ``bestshot.curate`` (:class:`CurateUpscaler` only calls its Workflow).
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from ..curate.layout import metadata_names
from ..curate.preferences import record_verdict
from ..errors import BestshotError
from ..store import Store, atomic_write_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class Curation:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.stage1, self.metadata = self.root / "stage1", self.root / "metadata"
        self.final, self.trash = self.root / "final", self.root / "trash"
        self.marks_path = self.root / "curation.json"
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ names and paths
    def _name(self, name: str, folder: Path) -> Path:
        """A bare image file name inside ``folder`` (Store.safe_path does the traversal checks)."""
        if not isinstance(name, str) or Path(name).name != name or not name.lower().endswith(IMAGE_SUFFIXES):
            raise BestshotError(f"invalid image name {name!r} — give a file name listed by GET /v1/curate")
        return Store(root=folder).safe_path(name)

    def image_path(self, name: str, where: str = "stage1") -> Path:
        folder = {"stage1": self.stage1, "trash": self.trash, "final": self.final}.get(where)
        if folder is None:
            raise BestshotError(f"unknown folder {where!r} — use stage1, trash or final")
        return self._name(name, folder)

    # ------------------------------------------------------------------ listing
    def _marks(self, key: str = "kept") -> set[str]:
        try:
            return set(json.loads(self.marks_path.read_text()).get(key, []))
        except (FileNotFoundError, ValueError, AttributeError, TypeError):
            return set()

    def _save_marks(self, kept: set[str], starred: set[str] | None = None) -> None:
        starred = self._marks("starred") if starred is None else starred
        atomic_write_json(self.marks_path, {"kept": sorted(kept), "starred": sorted(starred & kept)})

    def _images(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(
            (
                p
                for p in folder.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            ),
            key=lambda p: (-p.stat().st_mtime, p.name),
        )

    @staticmethod
    def _meta_file(folder: Path, name: str) -> Path | None:
        """The metadata file of image ``name`` in ``folder``: ``{tag}.json`` as stage 1 writes it, else
        ``{stem}.json`` (a folder laid out by hand); None when there is none."""
        for m in metadata_names(name):
            if (folder / m).is_file():
                return folder / m
        return None

    def _meta(self, folder: Path, name: str) -> dict[str, Any] | None:
        path = self._meta_file(folder, name)
        try:
            data = json.loads(path.read_text()) if path is not None else None
        except (ValueError, OSError):
            return None
        return data if isinstance(data, dict) or data is None else {"value": data}

    def listing(self) -> dict[str, Any]:
        kept, starred = self._marks(), self._marks("starred")
        return {
            "root": str(self.root),
            "stage1": [
                {
                    "name": p.name,
                    "kept": p.name in kept,
                    "starred": p.name in starred and p.name in kept,
                    "metadata": self._meta(self.metadata, p.name),
                }
                for p in self._images(self.stage1)
            ],
            "trash": [p.name for p in self._images(self.trash)],
            "final": [p.name for p in self._images(self.final)],
        }

    # ------------------------------------------------------------------ actions
    # Each action changes the folder (or the marks) and appends its preference row under one lock, so the
    # latest row always says where the image is; if the row cannot be written the change is undone.
    def keep(self, name: str, keep: bool = True) -> dict[str, Any]:
        """Mark (or unmark) a stage-1 image kept; the preference log gets ``keep`` (or ``undo``)."""
        with self._lock:
            if not self._name(name, self.stage1).is_file():
                raise FileNotFoundError(name)
            kept, starred = self._marks(), self._marks("starred")
            new_kept, new_starred = set(kept), set(starred)
            if keep:
                new_kept.add(name)
            else:
                new_kept.discard(name)
                new_starred.discard(name)
            self._mark_and_record(name, "keep" if keep else "undo", (new_kept, new_starred), (kept, starred))
        return {"name": name, "kept": keep, "starred": name in new_starred}

    def star(self, name: str, star: bool = True) -> dict[str, Any]:
        """Star (a stronger keep: also kept) or unstar; the log gets ``star`` (unstar: ``keep``, it stays kept)."""
        with self._lock:
            if not self._name(name, self.stage1).is_file():
                raise FileNotFoundError(name)
            kept, starred = self._marks(), self._marks("starred")
            new_kept, new_starred = set(kept), set(starred)
            if star:
                new_kept.add(name)
                new_starred.add(name)
            else:
                new_starred.discard(name)
            verdict = "star" if star else ("keep" if name in new_kept else "undo")
            self._mark_and_record(name, verdict, (new_kept, new_starred), (kept, starred))
        return {"name": name, "kept": name in new_kept, "starred": star}

    def _mark_and_record(self, name: str, verdict: str, new: tuple[set, set], old: tuple[set, set]) -> None:
        self._save_marks(*new)
        try:
            record_verdict(self.root, name, verdict)
        except OSError:
            self._save_marks(*old)
            raise

    def delete(self, name: str) -> dict[str, Any]:
        """Move the stage-1 image (and its metadata) into trash/; the log gets ``delete``."""
        return self._move(name, self.stage1, self.metadata, self.trash, self.trash, "delete")

    def undo(self, name: str) -> dict[str, Any]:
        """Move a deleted image (and its metadata) back to stage1/; the log forgets the deletion (``undo``)."""
        return self._move(name, self.trash, self.trash, self.stage1, self.metadata, "undo")

    def _move(self, name: str, src: Path, src_meta: Path, dst: Path, dst_meta: Path, verdict: str) -> dict[str, Any]:
        with self._lock:
            source = self._name(name, src)
            if not source.is_file():
                raise FileNotFoundError(name)
            target = self._name(name, dst)
            if target.exists():
                raise BestshotError(f"{name} already exists in {dst.name}/ — nothing was moved")
            dst.mkdir(parents=True, exist_ok=True)
            meta = self._meta_file(src_meta, name)
            moved = [(source, target)]
            if meta is not None:
                dst_meta.mkdir(parents=True, exist_ok=True)
                moved.insert(0, (meta, dst_meta / meta.name))
            done: list[tuple[Path, Path]] = []
            try:
                for a, b in moved:
                    os.replace(a, b)
                    done.append((a, b))
                record_verdict(self.root, name, verdict)
            except OSError:
                for a, b in reversed(done):  # nothing half-moved, nothing moved without its row
                    os.replace(b, a)
                raise
            if verdict == "delete":
                kept, starred = self._marks(), self._marks("starred")
                if name in kept or name in starred:
                    kept.discard(name)
                    starred.discard(name)
                    self._save_marks(kept, starred)
        return {"name": name, "folder": dst.name}

    def kept(self) -> list[str]:
        present = {p.name for p in self._images(self.stage1)}
        return sorted(self._marks() & present)


class CurateUpscaler:
    """Stages 2 and 3 of bestshot.curate for the kept images, run on the GPU worker.

    Needs the curate package and its workflow config (``--curate-config``, the ``config.yaml`` that
    ``bestshot stage1`` wrote); without either, :meth:`unavailable` says why and the route answers 503.
    """

    def __init__(self, config_path: str | os.PathLike | None):
        self.config_path = Path(config_path) if config_path else None

    def unavailable(self) -> str | None:
        try:
            importlib.import_module("bestshot.curate.workflow")
        except ImportError:
            return "upscaling needs bestshot.curate, which is not installed in this build"
        if self.config_path is None or not self.config_path.is_file():
            return (
                "upscaling needs the curation workflow's config — start the server with --curate-config "
                "config.yaml (the file `bestshot stage1` writes)"
            )
        return None

    def outputs(self) -> Path | None:
        """The workflow's outputs folder, so the gallery and the workflow look at the same files."""
        if self.unavailable():
            return None
        from ..curate.config import load_config

        cfg = load_config(self.config_path)
        return cfg.path(cfg.paths.outputs)

    def run(self, job: Any, curation: Curation, names: list[str]) -> dict[str, Any]:
        from ..curate.config import load_config
        from ..curate.layout import STAGE1_RE
        from ..curate.workflow import Workflow

        def say(msg: str) -> None:
            job.description = f"upscale: {msg}"

        wf = Workflow(load_config(self.config_path), say=say)
        done, skipped = [], []
        for name in names:
            m = STAGE1_RE.match(name)
            path = curation.stage1 / name
            if m is None or not path.is_file() or not wf.layout.metadata(m["tag"]).is_file():
                skipped.append(name)  # not a workflow image (or deleted meanwhile): nothing to upscale
            else:
                done.append(str(wf.upscale(m["tag"], path)))
            job.next_part()
        return {"final": done, "skipped": skipped}
