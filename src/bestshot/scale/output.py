"""Where a distributed job writes: a local (or shared) folder, or any URI pyarrow's file systems open.

Every write is atomic: readers see the old file or the whole new one, never a part. In a folder (local,
NFS, ``file://``) the bytes go to a hidden temp file beside the target, then one rename
(:func:`bestshot.store.atomic_write_bytes`); on an object store (``s3://``, ``gs://``) an object appears
only when its upload completes, so it is written in place; other pyarrow file systems get temp + move.

An :class:`Output` is picklable (it keeps only the URI): the driver hands it to Ray workers, each opens
its own file system connection on first use.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from ..errors import BestshotError

_OBJECT_STORES = ("s3://", "gs://", "gcs://")


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` other than ``file://`` (which is a plain local path)."""
    return "://" in str(location) and not str(location).startswith("file://")


class Output:
    """A folder or URI prefix to write named files into (``name`` is a file name, no folders)."""

    def __init__(self, location: str | Path):
        loc = str(location)
        if loc.startswith("file://"):
            loc = loc[len("file://") :]
        self.location = loc
        # absolute: a Ray worker may run in another working directory
        self.local: Path | None = None if is_uri(loc) else Path(loc).absolute()
        self._fs: Any = None
        self._base = ""

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"])

    def __repr__(self) -> str:
        return f"Output({self.location!r})"

    # -------------------------------------------------------------- remote file systems (pyarrow)
    def _remote(self) -> tuple[Any, str]:
        if self._fs is None:
            try:
                from pyarrow import fs as pafs
            except ImportError:
                raise BestshotError(
                    f"writing to {self.location} needs pyarrow — install it with: "
                    "pip install 'bestshot[ray]', or give a local folder"
                ) from None
            try:
                self._fs, self._base = pafs.FileSystem.from_uri(self.location)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError subclasses
                raise BestshotError(
                    f"cannot open {self.location}: {str(exc).splitlines()[0]} — check the URI "
                    "(e.g. s3://bucket/folder) and its credentials"
                ) from None
            self._base = self._base.rstrip("/")
        return self._fs, self._base

    def path(self, name: str) -> str:
        """Where ``name`` is (a local path or a URI), for messages and result tables."""
        return str(self.local / name) if self.local is not None else f"{self.location.rstrip('/')}/{name}"

    # -------------------------------------------------------------- the API
    def prepare(self) -> None:
        """Create the folder and check it takes files (one clear error before any model loads)."""
        if self.local is not None:
            from ..store import ensure_writable

            ensure_writable(self.local, "to the output folder")
            return
        fs, base = self._remote()
        try:
            fs.create_dir(base, recursive=True)
        except Exception as exc:  # noqa: BLE001
            raise BestshotError(
                f"cannot write to {self.location}: {str(exc).splitlines()[0]} — check the URI "
                "and that its credentials may write there"
            ) from None

    def write(self, name: str, data: bytes) -> None:
        """Write ``data`` as ``name`` atomically."""
        if self.local is not None:
            from ..store import atomic_write_bytes

            atomic_write_bytes(self.local / name, data)
            return
        fs, base = self._remote()
        target = f"{base}/{name}"
        if self.location.startswith(_OBJECT_STORES):
            with fs.open_output_stream(target) as f:  # the object exists only once the upload completes
                f.write(data)
            return
        tmp = f"{base}/.{name}.{secrets.token_hex(4)}.tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, target)

    def read(self, name: str) -> bytes | None:
        """The bytes of ``name``, or None when it does not exist (or cannot be read)."""
        if self.local is not None:
            try:
                return (self.local / name).read_bytes()
            except OSError:
                return None
        fs, base = self._remote()
        try:
            with fs.open_input_stream(f"{base}/{name}") as f:
                return f.read()
        except (OSError, FileNotFoundError):
            return None

    def open(self, name: str):
        """A seekable binary file of ``name`` (read lazily: a PNG's header and metadata without its pixels),
        or None when it does not exist."""
        if self.local is not None:
            try:
                return open(self.local / name, "rb")
            except OSError:
                return None
        fs, base = self._remote()
        try:
            return fs.open_input_file(f"{base}/{name}")
        except (OSError, FileNotFoundError):
            return None

    def exists(self, name: str) -> bool:
        if self.local is not None:
            return (self.local / name).is_file()
        from pyarrow import fs as pafs

        fs, base = self._remote()
        return fs.get_file_info(f"{base}/{name}").type == pafs.FileType.File


__all__ = ["Output", "is_uri"]
