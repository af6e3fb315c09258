"""The output store: the one place that decides where bestshot writes and how.

Every job (generate, upscale, evaluate, the HTTP server) writes through here so that all outputs share
the same guarantees:

* **atomic files** - a reader (gallery, server, another process) sees the old file or the new one, never
  half a PNG: write a temp file in the same folder, fsync, ``os.replace``.
* **append-safe log** - ``images_log.jsonl`` gets one complete line per run, even with several processes
  appending at once (one ``O_APPEND`` write under ``flock``).
* **self-describing images** - each PNG carries an AUTOMATIC1111-style ``parameters`` text chunk (so
  A1111, ComfyUI, civitai... can read it) and a ``bestshot`` chunk with the full JSON record.
* **a queryable index** - a small SQLite table of runs for ``GET /v1/runs`` and the gallery. The JSONL
  log is the source of truth; the index can always be rebuilt from it (:meth:`Store.rebuild_index`).

Layout::

    images_out/{run_id}_seed{N}_clip{score:.4f}.png
    images_out/index.sqlite
    images_log.jsonl
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import IO, Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from bestshot import jsonio
from bestshot.errors import BestshotError, StorageError

try:  # POSIX only; on other systems appends are still single writes, just not cross-process locked.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "new_run_id",
    "candidate_filename",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "save_png",
    "format_parameters",
    "parse_parameters",
    "read_png_info",
    "append_jsonl",
    "read_jsonl",
    "RunIndex",
    "Store",
    "png_bytes",
    "ensure_writable",
    "remove_stale_tmp",
    "disk_error",
    "unsaved_record",
]

# --------------------------------------------------------------------------------------------------
# run ids and file names

_RUN_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Run ids must sort by creation time even for a burst of runs inside one microsecond; the only state is
# the last timestamp this process handed out (a Lamport-style guard), protected by a lock for threads.
_last_us = 0
_last_us_lock = threading.Lock()


def new_run_id(now: datetime | None = None) -> str:
    """A run id such as ``20261123-094512-048213-3f9a1c``: UTC date, time, microseconds, random hex.

    Lexicographic order = creation order (UTC, so no DST jumps). Within one process ids are strictly
    increasing even for calls in the same microsecond (the microsecond field is bumped); across
    processes the 24 random bits keep them unique. With an explicit ``now`` the time is used as given
    (naive datetimes are taken as UTC) and only the random part guarantees uniqueness.
    """
    global _last_us
    if now is None:
        with _last_us_lock:
            us = max(time.time_ns() // 1000, _last_us + 1)
            _last_us = us
        now = datetime.fromtimestamp(us // 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)
    elif now.tzinfo is not None:
        now = now.astimezone(UTC)
    return f"{now:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(3)}"


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID_OK.match(run_id) or ".." in run_id:
        raise BestshotError(
            f"invalid run id {run_id!r} - use letters, digits, '.', '_' or '-' only "
            "(bestshot.store.new_run_id() makes a valid one)"
        )
    return run_id


def candidate_filename(run_id: str, seed: int, score: float) -> str:
    """``{run_id}_seed{seed}_clip{score:.4f}.png`` - the one layout of kept images."""
    return f"{_check_run_id(run_id)}_seed{int(seed)}_clip{float(score):.4f}.png"


# --------------------------------------------------------------------------------------------------
# atomic writes


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (the directory entry is data too). Not all file systems allow it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Yield a file that replaces ``path`` only if the ``with`` block finishes without error.

    The temp file lives in the same folder (``os.replace`` is atomic only within one file system) and is
    hidden with a ``.tmp`` suffix so globbing ``*.png`` never sees it. It is created with mode 0o666 so
    the final file gets the usual umask permissions (``mkstemp`` would give 0o600). On any error the
    temp file is removed and the previous ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`); parents are created."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic UTF-8 text write."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic pretty JSON write. Serialised before the file is touched, so bad data changes nothing.

    Strict JSON (:mod:`bestshot.jsonio`): a non-finite float is written as ``null``, never ``NaN``."""
    return atomic_write_text(path, jsonio.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------------
# AUTOMATIC1111 "parameters" text (the de-facto standard PNG info every SD tool reads)

# Verbatim from A1111 modules/infotext_utils.py, so we parse exactly what A1111 parses.
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
_RE_KEY = re.compile(r"^\w[\w \-/]+$")
_INT_KEYS = {"Steps", "Seed", "Clip skip", "Variation seed", "Batch size", "Batch pos"}
_FLOAT_KEYS = {"CFG scale", "Denoising strength", "Variation seed strength"}


def _quote(value: Any) -> str:
    """A1111's ``quote``: JSON-quote values that would break the ``k: v, k: v`` line.

    A1111 quotes on ``,`` ``:`` or newline; we also quote a value that starts with ``"`` so that the
    parser's unquoting cannot change it.
    """
    text = str(value)
    if any(c in text for c in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_parameters(
    prompt: str,
    negative_prompt: str | None,
    *,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str | None = None,
    extra: dict | None = None,
) -> str:
    """The A1111 infotext: prompt, optional ``Negative prompt:`` line(s), then the ``k: v`` line.

    ``Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 1024x1024, Model: sdxl, <extra>``.
    ``None`` values in ``extra`` are skipped (as A1111 does). Note A1111's parser strips each prompt line,
    so leading/trailing spaces on a line do not survive a round trip.
    """
    params: dict[str, Any] = {
        "Steps": int(steps),
        "Sampler": sampler,
        "CFG scale": float(cfg_scale),
        "Seed": int(seed),
        "Size": f"{int(width)}x{int(height)}",
        "Model": model,
    }
    for k, v in (extra or {}).items():
        if not _RE_KEY.match(str(k)):
            raise ValueError(f"format_parameters: key {k!r} is not A1111-parseable (letters, digits, ' ', '-', '/')")
        if k in params or k in ("Prompt", "Negative prompt"):
            raise ValueError(f"format_parameters: extra key {k!r} clashes with a standard field")
        params[k] = v
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in params.items() if v is not None)
    text = prompt.strip()
    if negative_prompt and negative_prompt.strip():
        text += f"\nNegative prompt: {negative_prompt.strip()}"
    return f"{text}\n{line}"


def _convert(key: str, value: str) -> Any:
    try:
        if key in _INT_KEYS or key.endswith(("-1", "-2")):
            return int(value)
        if key in _FLOAT_KEYS:
            return float(value)
    except ValueError:
        pass  # a foreign file with an odd value: keep the string rather than fail
    return value


def parse_parameters(text: str) -> dict:
    """Parse an A1111 infotext exactly as A1111's ``parse_generation_parameters`` does.

    The last line is the ``k: v`` line if it holds at least 3 pairs; lines before it are the prompt until
    one starts with ``Negative prompt:``, after which they are the negative prompt. ``WxH`` values are
    split into ``<key>-1`` / ``<key>-2``. Returns ``prompt`` and ``negative_prompt`` (lower-case keys) plus
    the A1111 keys; Steps/Seed and ``*-1``/``*-2`` are ints, CFG scale a float, everything else strings.
    """
    prompt, negative, done_with_prompt = "", "", False
    *lines, lastline = text.strip().split("\n")
    if len(_RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line

    res: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
    for k, v in _RE_PARAM.findall(lastline):
        if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            with contextlib.suppress(ValueError):
                v = json.loads(v)
        m = _RE_IMAGESIZE.match(v)
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = int(m.group(1)), int(m.group(2))
        else:
            res[k] = _convert(k, v)
    return res


# --------------------------------------------------------------------------------------------------
# PNG with metadata


def save_png(
    path: str | os.PathLike,
    image: Image.Image,
    parameters: str | None = None,
    metadata: dict | None = None,
) -> Path:
    """Save ``image`` losslessly and atomically with text chunks ``parameters`` and ``bestshot``.

    ``metadata`` is serialised before anything is written (a TypeError leaves no file). PIL writes a
    ``tEXt`` chunk for Latin-1 text and an ``iTXt`` (UTF-8) chunk otherwise - A1111 readers handle both.
    """
    data = png_bytes(image, parameters, metadata)
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def png_bytes(image: Image.Image, parameters: str | None = None, metadata: dict | None = None) -> bytes:
    """The PNG file :func:`save_png` writes, in memory (nothing touches the disk)."""
    info = PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    if metadata is not None:
        info.add_text("bestshot", jsonio.dumps(metadata))  # ASCII-only JSON -> always a tEXt chunk
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def open_rgb(item: str | os.PathLike | Image.Image) -> Image.Image:
    """A path or PIL image → RGB PIL image; an unreadable file is a user error naming the file."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    try:
        with Image.open(item) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise BestshotError(f"cannot read image {item} ({type(e).__name__}: {e}) — remove or replace the file") from e


def read_png_info(path_or_image: str | os.PathLike | Image.Image) -> dict:
    """``{"parameters": str|None, "bestshot": dict|None, "parsed": dict|None}`` from a PNG.

    Works on files written by bestshot or by A1111. A missing/unreadable file is a :class:`BestshotError`;
    a corrupt ``bestshot`` chunk gives ``None`` with a warning rather than failing the whole read.
    """
    if isinstance(path_or_image, Image.Image):
        return _png_info_from(path_or_image)
    try:
        with Image.open(path_or_image) as im:
            return _png_info_from(im)
    except (OSError, Image.UnidentifiedImageError) as e:
        raise BestshotError(f"cannot read image {str(path_or_image)!r}: {e} - check the path is a PNG file") from e


def _png_info_from(im: Image.Image) -> dict:
    texts = {k: v for k, v in im.info.items() if isinstance(v, str)}
    if "parameters" not in texts and hasattr(im, "text"):  # chunks stored after the image data
        texts.update(im.text)
    parameters = texts.get("parameters")
    bestshot = None
    if texts.get("bestshot") is not None:
        try:
            bestshot = json.loads(texts["bestshot"])
        except ValueError:
            warnings.warn("read_png_info: the 'bestshot' PNG chunk is not valid JSON; ignoring it", stacklevel=2)
    return {
        "parameters": parameters,
        "bestshot": bestshot,
        "parsed": parse_parameters(parameters) if parameters else None,
    }


# --------------------------------------------------------------------------------------------------
# JSON lines log


def _unserialisable_key(obj: Any, where: str = "") -> str | None:
    """Path (e.g. ``candidates[2].image``) of the first value json.dumps rejects, for a useful error."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _unserialisable_key(v, f"{where}.{k}" if where else str(k))
            if found is not None:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _unserialisable_key(v, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    try:
        jsonio.dumps(obj)
    except (TypeError, ValueError):
        return where or "<record>"
    return None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one line, safely against other threads and processes appending too.

    The line is serialised first, so a value JSON cannot hold (a PIL image!) raises TypeError naming the
    key and nothing is written. Then, under an exclusive ``flock``: if the file does not end in a
    newline (another writer crashed mid-line) we start a fresh line so ours stays parseable; one
    ``O_APPEND`` write of the whole line; fsync. Non-ASCII is kept readable; ``read_jsonl`` splits on
    ``\\n`` only, so unusual Unicode line separators inside strings are harmless.
    """
    if not isinstance(record, dict):
        raise TypeError(f"append_jsonl: record must be a dict, not {type(record).__name__}")
    try:
        line = jsonio.dumps(record, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        key = _unserialisable_key(record)
        raise TypeError(
            f"append_jsonl: record key {key!r} is not JSON-serialisable ({e}); nothing was written - "
            "leave images and other objects out of log records"
        ) from e
    data = (line + "\n").encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            view = memoryview(data)
            try:
                while view:  # a regular-file write is normally complete; loop in case it is not
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:  # a full disk mid-line: take the partial line back, never leave half of one
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL log; a missing file is an empty log.

    Tolerant by design: a truncated last line (a crash mid-write by some other tool) or any corrupt line
    is skipped with a warning naming the line number, so one bad line never hides the whole history.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            warnings.warn(f"{path}:{n}: skipping a truncated or corrupt JSON line", stacklevel=2)
            continue
        if not isinstance(rec, dict):
            warnings.warn(f"{path}:{n}: skipping a line that is not a JSON object", stacklevel=2)
            continue
        records.append(rec)
    return records


# --------------------------------------------------------------------------------------------------
# SQLite index of runs


class RunIndex:
    """A table of runs for listing (``GET /v1/runs``, gallery) without scanning the whole JSONL log.

    One short-lived connection per call: safe from any thread of the server, no handle kept open.
    ``add`` of an existing run id replaces it, so re-indexing from the log is idempotent.
    """

    _SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY, created TEXT, kind TEXT, prompt TEXT, model TEXT,
        ok INTEGER, best_path TEXT, record_json TEXT NOT NULL)"""
    _OFFSETS = "CREATE TABLE IF NOT EXISTS log_offsets (log TEXT PRIMARY KEY, size INTEGER NOT NULL)"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(self._SCHEMA)
            db.execute("CREATE INDEX IF NOT EXISTS runs_created ON runs(created)")
            db.execute(self._OFFSETS)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:  # commit on success, roll back on error
                yield db
        finally:
            db.close()

    @staticmethod
    def _row(record: dict) -> tuple:
        run_id = record.get("run_id")
        if not run_id:
            raise ValueError("RunIndex.add: the record has no 'run_id'")
        created = record.get("created") or datetime.now(UTC).isoformat()
        ok = record.get("ok")
        return (
            str(run_id),
            str(created),
            record.get("kind", "generate"),
            record.get("prompt", record.get("sd_prompt")),
            record.get("model"),
            None if ok is None else int(bool(ok)),
            record.get("img_path"),
            jsonio.dumps(record, ensure_ascii=False),
        )

    def add(self, record: dict) -> None:
        """Index one run record (must have ``run_id``). ``created`` defaults to now (UTC, ISO 8601)."""
        row = self._row(record)
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def catch_up(self, log_path: str | os.PathLike, restart: bool = False) -> int:
        """Index every complete line ``log_path`` gained since the index last read it; returns how many runs.

        The index remembers, per log file, the byte size it has read up to, so a line whose indexing failed
        (a full disk, a locked database, a killed process) is indexed by the next call, from any process:
        the index cannot stay behind its log. The first call for a log (or ``restart``, or a log that
        shrank) reads it from the start; re-adding a run is harmless (same run id, same row). One write
        transaction, so processes catching up at once take turns.
        """
        key = str(Path(log_path).resolve())
        with self._connect() as db:
            db.execute(self._OFFSETS)
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT size FROM log_offsets WHERE log = ?", (key,)).fetchone()
            start = 0 if restart or row is None else int(row[0])
            try:
                size = os.path.getsize(log_path)
            except FileNotFoundError:
                size = 0
            if start > size:  # the log was replaced by a shorter one: read it all again
                start = 0
            if start == size:
                return 0
            with open(log_path, "rb") as f:
                f.seek(start)
                data = f.read(size - start)
            end = data.rfind(b"\n") + 1  # complete lines only: a line being appended is read next time
            n = 0
            for raw in data[:end].split(b"\n"):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue  # read_jsonl warns about it; the index just skips it
                if isinstance(rec, dict) and rec.get("run_id"):
                    db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._row(rec))
                    n += 1
            db.execute("INSERT OR REPLACE INTO log_offsets VALUES (?, ?)", (key, start + end))
        return n

    def list(self, limit: int = 50, offset: int = 0) -> list[dict]:
        """Run records, newest first (by ``created``, then run id)."""
        if not isinstance(limit, int) or not isinstance(offset, int) or limit < 0 or offset < 0:
            raise BestshotError(f"invalid page limit={limit!r} offset={offset!r} - both must be integers >= 0")
        with self._connect() as db:
            rows = db.execute(
                "SELECT record_json FROM runs ORDER BY created DESC, run_id DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def get(self, run_id: str) -> dict | None:
        """The record of ``run_id``, or None."""
        with self._connect() as db:
            row = db.execute("SELECT record_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else json.loads(row[0])


# --------------------------------------------------------------------------------------------------
# writable folders, stale temp files

STALE_TMP_S = 3600  # a hidden temp file untouched for an hour belongs to a killed run


def _disk_error(e: OSError, what: str) -> StorageError:
    fix = {
        errno.ENOSPC: "free some disk space or choose another folder",
        errno.EDQUOT: "free some disk space (quota) or choose another folder",
        errno.EROFS: "the file system is read-only — choose another folder",
        errno.EACCES: "choose a folder you may write to, or fix its permissions",
        errno.EPERM: "choose a folder you may write to, or fix its permissions",
    }.get(e.errno, "choose another folder or fix this one")
    return StorageError(f"cannot write {what}: {e.strerror or e} — {fix}")


def disk_error(e: OSError, what: str) -> StorageError:
    """A write that failed with ``e`` as one clear :class:`~bestshot.errors.StorageError` (``what`` names the
    file or folder, e.g. ``"the results file 'runs/p.results.jsonl'"``) with the fix for its errno."""
    return _disk_error(e, what)


def ensure_writable(folder: str | os.PathLike, what: str = "to the output folder") -> Path:
    """Create ``folder`` if needed and check a file can be written in it; one clear error otherwise.

    Jobs call this before loading any model, so a read-only or missing-permission folder costs seconds,
    not a generation. (A full disk shows up here only when it is already full; a disk that fills up
    mid-run is handled by :meth:`Store.save_run`, which keeps nothing half-written.)
    """
    folder = Path(folder)
    probe = folder / f".bestshot-write-check.{secrets.token_hex(4)}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:  # a file, not a folder, sits on the path
        raise StorageError(
            f"cannot write {what} {str(folder)!r}: a file of that name is in the way — choose another folder"
        ) from None
    except OSError as e:
        raise _disk_error(e, f"{what} {str(folder)!r}") from None
    with contextlib.suppress(OSError):
        probe.unlink()
    return folder


def remove_stale_tmp(folder: str | os.PathLike, older_than_s: float = STALE_TMP_S) -> int:
    """Delete hidden ``.*.tmp`` files a killed run left in ``folder`` (older than ``older_than_s``).

    Readers never see them (temp names are hidden and do not end in ``.png``); this only frees the space.
    Returns how many were removed; files another run is still writing are younger and kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    now, n = time.time(), 0
    for p in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if p.is_file() and now - p.stat().st_mtime > older_than_s:
                p.unlink()
                n += 1
    return n


def unsaved_record(record: dict) -> dict:
    """``record`` as logged when its images were not kept (``save_images: false``): no image paths, and
    ``saved: false`` so that no reader looks for files."""
    rec = {**record, "img_path": None, "saved": False}
    if isinstance(rec.get("candidates"), list):
        rec["candidates"] = [{**c, "path": None} if isinstance(c, dict) else c for c in rec["candidates"]]
    return rec


def _rel_posix(path: str | os.PathLike, base: Path) -> str:
    """``path`` relative to folder ``base`` (``../`` allowed), POSIX style; absolute when no relative form exists."""
    p = Path(path).resolve()
    try:
        return Path(os.path.relpath(p, base.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return str(p)


# --------------------------------------------------------------------------------------------------
# the store


@dataclass
class Store:
    """Where outputs go. Construct once per job from config; nothing is created until first write."""

    root: Path = Path("images_out")
    log_path: Path = Path("images_log.jsonl")
    index_path: Path | None = None  # default: root / "index.sqlite"
    # False: a run's images are written as hidden temp files only (the caller reads, then deletes them) and
    # its log line says so (no paths, ``saved: false``): A1111's ``save_images: false``
    keep_images: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.log_path = Path(self.log_path)
        self.index_path = Path(self.index_path) if self.index_path is not None else self.root / "index.sqlite"

    @cached_property
    def index(self) -> RunIndex:
        return RunIndex(self.index_path)

    def image_path(self, run_id: str, seed: int, score: float) -> Path:
        return self.root / candidate_filename(run_id, seed, score)

    def check_writable(self) -> None:
        """Before any model loads: the image folder and the log's folder take files (one clear error
        otherwise); stale temp files of a killed run are removed."""
        ensure_writable(self.root, "to the output folder")
        ensure_writable(self.log_path.parent, "the run log in")
        remove_stale_tmp(self.root)

    def save_run(self, files: list[tuple[Path, Image.Image, str | None, dict | None]], record: dict) -> None:
        """Write a run's images and its log line as one unit: all or nothing.

        ``files`` holds ``(path, image, parameters, metadata)`` as :func:`save_png` takes them. Every
        image goes to a hidden temp file first; only when all are on disk are they renamed into
        place and the line appended. Any failure (a full disk at the third image, a read-only log...) removes
        the temp files and any image already renamed, and is one :class:`~bestshot.errors.StorageError`
        naming the folder: no image is left without its log line.

        With ``keep_images=False`` nothing is renamed into place: the log line records that no image was
        kept (:func:`unsaved_record`) and ``record``'s paths are changed to the temp files, for the caller
        to read and delete (one a killed caller leaves is removed by :func:`remove_stale_tmp`).
        """
        tmps: list[Path] = []
        placed: list[Path] = []
        where = f"run {record.get('run_id')!r} to {str(self.root)!r}"
        try:
            for path, image, parameters, metadata in files:
                data = png_bytes(image, parameters, metadata)
                path = Path(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
                tmps.append(tmp)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            if self.keep_images:
                for tmp, (path, *_) in zip(tmps, files):
                    os.replace(tmp, path)
                    placed.append(Path(path))
                self.log_run(record)
            else:
                self.log_run(unsaved_record(record))
                moved = {str(path): str(tmp) for tmp, (path, *_) in zip(tmps, files)}
                record["img_path"] = moved.get(str(record.get("img_path")), record.get("img_path"))
                for c in record.get("candidates") or []:
                    if isinstance(c, dict) and c.get("path"):
                        c["path"] = moved.get(str(c["path"]), c["path"])
                record["saved"] = False
        except BaseException as e:
            for p in tmps + placed:
                with contextlib.suppress(OSError):
                    p.unlink()
            if isinstance(e, OSError):
                raise _disk_error(e, f"{where} (nothing of it was kept)") from None
            raise
        if files:
            _fsync_dir(self.root)

    def log_record(self, record: dict) -> dict:
        """The record as the log stores it: image paths relative to the log file's folder, so the log and
        its images can be read from any working directory (and moved together)."""
        if record.get("path_base") == "log_dir":
            return record
        base = self.log_path.parent
        rec = dict(record)
        if rec.get("img_path"):
            rec["img_path"] = _rel_posix(rec["img_path"], base)
        if isinstance(rec.get("candidates"), list):
            rec["candidates"] = [
                {**c, "path": _rel_posix(c["path"], base)} if isinstance(c, dict) and c.get("path") else c
                for c in rec["candidates"]
            ]
        if rec.get("img_path") or any(isinstance(c, dict) and c.get("path") for c in rec.get("candidates") or []):
            rec["path_base"] = "log_dir"
        return rec

    def resolve_path(self, path: str | None, record: dict | None = None) -> Path | None:
        """Where an image path of a record is: absolute paths as they are; paths of a record logged with
        ``path_base: log_dir`` against the log's folder; older records (paths relative to the working
        directory of the run) against the working directory, then the log's folder."""
        if not path:
            return None
        p = Path(path)
        if p.is_absolute():
            return p
        in_log_dir = self.log_path.resolve().parent / p
        if record is not None and record.get("path_base") == "log_dir":
            return in_log_dir
        return p.resolve() if p.exists() or not in_log_dir.exists() else in_log_dir

    def log_run(self, record: dict) -> None:
        """Append the run to the JSONL log (source of truth), then bring the index up to date with it.

        Image paths are stored relative to the log's folder (:meth:`log_record`). A log that cannot be
        written is one :class:`~bestshot.errors.StorageError` naming it. An index failure (locked or corrupt
        database, full disk...) only warns: the log line is on disk and the next run's (or a server
        start's) :meth:`sync_index` indexes it.
        """
        record = self.log_record(record)
        try:
            append_jsonl(self.log_path, record)
        except OSError as e:
            raise _disk_error(e, f"the run log {str(self.log_path)!r}") from None
        try:
            self.index.catch_up(self.log_path)
        except Exception as e:  # noqa: BLE001 - the log line is safe; never fail the run for the index
            warnings.warn(
                f"run {record.get('run_id')!r} logged but not indexed yet ({e}); the next run "
                "(or bestshot serve starting) indexes it",
                stacklevel=2,
            )

    def sync_index(self) -> int:
        """Index the log lines the index has not seen (a run whose indexing failed); returns how many.
        Warns instead of failing: the log stays the source of truth."""
        try:
            return self.index.catch_up(self.log_path)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"the run index {str(self.index_path)!r} could not be brought up to date ({e})", stacklevel=2)
            return 0

    def rebuild_index(self) -> int:
        """Re-index every record of the JSONL log that has a run id; returns how many."""
        return self.index.catch_up(self.log_path, restart=True)

    def safe_path(self, name: str) -> Path:
        """Resolve a user-supplied file name (HTTP request, CLI) to a path that is inside ``root``.

        Rejects empty names, NUL bytes, absolute paths, ``..`` components and symlinks that point out of
        ``root``. Returns the resolved path (which need not exist yet).
        """
        bad = BestshotError(
            f"unsafe file name {name!r} - give a file name inside {str(self.root)!r}, "
            "e.g. one listed by the run's candidates"
        )
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise bad
        rel = Path(name)
        if rel.is_absolute() or name.startswith(("/", "\\")) or rel.drive or ".." in rel.parts:
            raise bad
        root = self.root.resolve()
        target = (root / rel).resolve()
        if target == root or not target.is_relative_to(root):
            raise bad
        return target
