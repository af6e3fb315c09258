"""The output layout and file names of the curation workflow: this module alone decides them.

::

    outputs/stage1/{tag}_stage1_{W}x{H}.png           base images (curate these)
    outputs/metadata/{tag}.json                       everything about the image, updated per stage
    outputs/intermediates/stage2_up/{tag}_stage2_up_{W}x{H}.png
    outputs/intermediates/stage2/{tag}_stage2_{W}x{H}.png
    outputs/intermediates/stage3_up/{tag}_stage3_up_{W}x{H}.png
    outputs/intermediates/tiles/{tag}_tile_000.png
    outputs/final/{tag}_final_{W}x{H}.png

A tag is ``YYYYmmdd_HHMMSS``; a second image in the same second gets ``_1``, ``_2``, ... The tag is
claimed by creating its metadata file with ``os.link`` from a finished temp file: the link fails if the
name exists (so two processes never share a tag) and the file appears complete or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bestshot import jsonio

from ..store import atomic_write_json

FOLDERS = (
    "stage1",
    "metadata",
    "final",
    "intermediates/stage2_up",
    "intermediates/stage2",
    "intermediates/stage3_up",
    "intermediates/tiles",
)
STAGE1_RE = re.compile(r"^(?P<tag>\d{8}_\d{6}(?:_\d+)?)_stage1_(?P<w>\d+)x(?P<h>\d+)\.png$")


@dataclass(frozen=True)
class Layout:
    root: Path  # the outputs folder

    def make(self) -> Layout:
        for f in FOLDERS:
            (self.root / f).mkdir(parents=True, exist_ok=True)
        return self

    # ---------------------------------------------------------------- names
    def metadata(self, tag: str) -> Path:
        return self.root / "metadata" / f"{tag}.json"

    def stage1(self, tag: str, w: int, h: int) -> Path:
        return self.root / "stage1" / f"{tag}_stage1_{w}x{h}.png"

    def stage2_up(self, tag: str, w: int, h: int) -> Path:
        return self.root / "intermediates" / "stage2_up" / f"{tag}_stage2_up_{w}x{h}.png"

    def stage2(self, tag: str, w: int, h: int) -> Path:
        return self.root / "intermediates" / "stage2" / f"{tag}_stage2_{w}x{h}.png"

    def stage3_up(self, tag: str, w: int, h: int) -> Path:
        return self.root / "intermediates" / "stage3_up" / f"{tag}_stage3_up_{w}x{h}.png"

    @property
    def tiles_dir(self) -> Path:
        return self.root / "intermediates" / "tiles"

    @staticmethod
    def tile_name(tag: str) -> str:
        """A ``str.format`` pattern for :func:`bestshot.upscale.tiled.refine_tiled` (``{index}``)."""
        return f"{tag}_tile_{{index:03d}}.png"

    def final(self, tag: str, w: int, h: int) -> Path:
        return self.root / "final" / f"{tag}_final_{w}x{h}.png"

    def finals(self, tag: str) -> list[Path]:
        return sorted((self.root / "final").glob(f"{glob_escape(tag)}_final_*x*.png"))

    # ---------------------------------------------------------------- tags and metadata
    def claim_tag(self, record: dict[str, Any], now: float | None = None) -> str:
        """Pick the first free tag for ``now`` and create its metadata file holding ``record``."""
        base = time.strftime("%Y%m%d_%H%M%S", time.localtime(now if now is not None else time.time()))
        folder = self.root / "metadata"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".claim.{secrets.token_hex(4)}.tmp"
        n = 0
        try:
            while True:
                tag = base if n == 0 else f"{base}_{n}"
                tmp.write_text(jsonio.dumps({**record, "tag": tag}, indent=2, ensure_ascii=False) + "\n", "utf-8")
                try:
                    os.link(tmp, self.metadata(tag))  # atomic, fails if the tag is taken
                    return tag
                except FileExistsError:
                    n += 1
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def read_metadata(self, tag: str) -> dict[str, Any]:
        return json.loads(self.metadata(tag).read_text(encoding="utf-8"))

    def write_metadata(self, tag: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.metadata(tag), record)

    def survivors(self) -> list[tuple[str, Path]]:
        """(tag, stage1 path) of every stage 1 image still present that has its metadata JSON, by tag."""
        out = []
        folder = self.root / "stage1"
        if not folder.is_dir():
            return out
        for p in folder.iterdir():
            m = STAGE1_RE.match(p.name)
            if m and p.is_file() and self.metadata(m["tag"]).is_file():
                out.append((m["tag"], p))
        return sorted(out, key=lambda tp: tag_order(tp[0]))


def tag_of(name: str) -> str:
    """The tag of a stage-1 image name (``{tag}_stage1_{W}x{H}.png`` → ``{tag}``); another name's stem."""
    m = STAGE1_RE.match(name)
    return m["tag"] if m else Path(name).stem


def metadata_names(name: str) -> list[str]:
    """The metadata file names a stage-1 image may have, best first: ``{tag}.json`` (what stage 1 writes),
    then ``{stem}.json`` (folders laid out by hand, and older galleries)."""
    return list(dict.fromkeys((f"{tag_of(name)}.json", f"{Path(name).stem}.json")))


def tag_order(tag: str) -> tuple[str, int]:
    """Creation order: ``..._HHMMSS`` < ``..._HHMMSS_1`` < ``..._HHMMSS_2`` (plain sorting puts _1 first)."""
    stamp, n = tag[:15], tag[16:]
    return stamp, int(n) if n.isdigit() else 0


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
