"""The one JSON writer of bestshot: strict JSON that every reader accepts.

Python's ``json.dumps`` writes ``NaN``, ``Infinity`` and ``-Infinity`` for non-finite floats, which is not
JSON: ``jq``, JavaScript's ``JSON.parse`` and most other readers refuse the whole line. Every JSON and JSONL
file bestshot writes (the run log, the PNG ``bestshot`` chunk, metadata, results tables, training
summaries) and every JSON it prints goes through :func:`dumps`.

The choice: **a non-finite float becomes ``null``**. Inputs (flags, config fields) are refused at the
edge when they are NaN or infinite (see :func:`check_finite`), so a non-finite value that still reaches a
writer was computed (a score of a broken image, a loss that diverged): ``null`` says "no number" without
losing the rest of the record, where refusing would lose a finished run's log line. numpy scalars and
arrays are converted to plain numbers and lists. The output is then serialised with
``allow_nan=False``, so a non-finite value can never slip through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from .errors import BestshotError

__all__ = ["sanitise", "dumps", "loads_strict", "check_finite"]


def sanitise(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: non-finite floats → ``None``; numpy → Python."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: sanitise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitise(v) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy scalars/arrays, torch tensors
    if callable(tolist) and type(obj).__module__.split(".")[0] in ("numpy", "torch"):
        return sanitise(tolist())
    return obj


def dumps(obj: Any, *, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """``json.dumps`` that never writes ``NaN``/``Infinity`` (non-finite floats become ``null``).

    Keyword arguments (``indent``, ``ensure_ascii``, ``sort_keys``...) are passed on; ``default`` is
    applied before sanitising so a value it converts is checked too.
    """
    if default is not None:
        obj = json.loads(json.dumps(obj, default=default))  # apply ``default`` once (NaN survives this step)
    return json.dumps(sanitise(obj), allow_nan=False, **kwargs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN``/``Infinity`` as jq and JavaScript do (for tests and checks)."""
    return json.loads(text, parse_constant=_refuse_constant)


def check_finite(value: Any, name: str, fix: str = "give a finite number") -> Any:
    """Raise :class:`BestshotError` when ``value`` (a number, or a list/tuple/dict of them) holds NaN or ±inf."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BestshotError(f"{name} must be a finite number (got {value}) — {fix}")
    if isinstance(value, (list, tuple)):
        for v in value:
            check_finite(v, name, fix)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{name}.{k}", fix)
    return value
