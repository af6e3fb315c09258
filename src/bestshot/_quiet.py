"""Quiet runs: third-party noise a user cannot act on is silenced, narrowly, in one place.

The CLI calls :func:`apply` once at start-up. Each rule names the library, the logger and the message it
drops, and why it is noise; nothing else is muted (no global log level, no blanket warning filter), so
bestshot's own warnings and any other library warning still show.

* transformers: "``CLIPImageProcessor`` requires torchvision (not installed); falling back to ..." — bestshot
  installs without torchvision on purpose and uses the PIL processors; the fallback is the intended path.
* diffusers: "There are modules in AutoencoderKL that should be kept in float32 ..." — the SDXL img2img
  pipeline casts its own VAE up and down around every decode (``force_upcast``), once per tile of a tiled
  upscale; nothing in the user's hands.
* diffusers / transformers "Loading pipeline components", "Loading weights", "Writing model shards" tqdm
  bars for files read from the local disk: bestshot shows its own progress. (Hub download bars of
  huggingface_hub are kept: a first download of gigabytes should show progress.)
* ncnn (Real-ESRGAN) prints "0.00%" from C straight to a file descriptor (2): :func:`quiet_c_output`
  wraps that call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

# logger → (start of the message, text it must also contain) of each message dropped
_DROP: dict[str, tuple[str, str | None]] = {
    "transformers.utils.import_utils": ("`", "requires torchvision (not installed); falling back to"),
    "diffusers.models.modeling_utils": ("There are modules in AutoencoderKL that should be kept in float32", None),
}

_applied = False


class _DropMessages(logging.Filter):
    def __init__(self, starts: str, contains: str | None = None):
        super().__init__()
        self.starts, self.contains = starts, contains

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge: let it through
            return True
        return not (msg.startswith(self.starts) and (self.contains is None or self.contains in msg))


def apply() -> None:
    """Install the filters (idempotent). Cheap: no third-party module is imported."""
    global _applied
    if _applied:
        return
    _applied = True
    for name, (starts, contains) in _DROP.items():
        logging.getLogger(name).addFilter(_DropMessages(starts, contains))
    _disable_loading_bars()


def _disable_loading_bars() -> None:
    """diffusers and transformers loading bars off, once those libraries are imported (lazily)."""
    import importlib.abc
    import importlib.machinery

    def off(name: str) -> None:
        try:
            if name == "diffusers":
                from diffusers.utils import logging as dl

                dl.disable_progress_bar()
            elif name == "transformers":
                from transformers.utils import logging as tl

                tl.disable_progress_bar()
        except Exception:  # noqa: BLE001 - an older/newer library without the switch: keep its bars
            pass

    pending = {"diffusers", "transformers"}
    for name in list(pending):
        if name in sys.modules:
            off(name)
            pending.discard(name)
    if not pending:
        return

    class _Hook(importlib.abc.MetaPathFinder):
        """Turns a library's bars off right after it is first imported, so ``import bestshot`` stays cheap."""

        def find_spec(self, fullname, path=None, target=None):
            if fullname not in pending:
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None:
                return None
            loader = spec.loader
            real_exec = loader.exec_module

            def exec_module(module, _real=real_exec, _name=fullname):
                _real(module)
                pending.discard(_name)
                off(_name)

            loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, _Hook())


@contextlib.contextmanager
def quiet_c_output(fds: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null for the block: C code that prints on its own (ncnn's
    "0.00%" goes to fd 2). Python's ``sys.stdout``/``sys.stderr`` are flushed first and the descriptors
    restored after, so our own output is unaffected; exceptions still propagate. Does nothing where the
    descriptors cannot be duplicated (no real stdout/stderr, e.g. under a test's capture)."""
    saved: list[tuple[int, int]] = []
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with open(os.devnull, "wb") as null:
            for fd in fds:
                saved.append((fd, os.dup(fd)))
                os.dup2(null.fileno(), fd)
    except (OSError, ValueError):
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        saved = []
    try:
        yield
    finally:
        for fd, copy in saved:
            with contextlib.suppress(OSError):
                os.dup2(copy, fd)
            os.close(copy)
