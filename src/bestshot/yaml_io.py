"""Reading YAML configs into dataclasses, with errors that name the file, the key and the fix.

Every config in bestshot (``ImgCfg``, the training configs, the captioner, the curation workflow) is a
dataclass; these two functions are the only place YAML is read and unknown keys are rejected.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

from .errors import BestshotError
from .jsonio import check_finite

T = TypeVar("T")


def read_user_text(
    path: str | os.PathLike, what: str, hint: str = "check the path", empty_hint: str | None = None
) -> str:
    """The UTF-8 text of a file the user named; every problem is one BestshotError naming the file.

    Missing, a folder, unreadable, binary (NUL bytes), not UTF-8 and - when ``empty_hint`` is given -
    empty (only whitespace) files are refused with the fix.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise BestshotError(f"{what} {p} does not exist — {hint}") from None
    except IsADirectoryError:
        raise BestshotError(f"{what} {p} is a folder, not a file — {hint}") from None
    except OSError as e:
        raise BestshotError(
            f"cannot read {what} {p}: {e.strerror or e} — check the file exists and is readable (permissions)"
        ) from None
    if b"\x00" in data:
        raise BestshotError(
            f"cannot read {what} {p}: it is a binary file (it holds NUL bytes) — pass a UTF-8 text file"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BestshotError(
            f"cannot read {what} {p}: it is not UTF-8 text (byte {e.start}) — pass a readable "
            "UTF-8 text file (re-save it as UTF-8)"
        ) from None
    if empty_hint is not None and not text.strip():
        raise BestshotError(f"{what} {p} is empty — {empty_hint}")
    return text


def read_yaml_mapping(path: str | os.PathLike, hint: str = "pass an existing YAML file") -> dict[str, Any]:
    """The mapping in YAML file ``path``; any problem (also a file with no settings) is one BestshotError."""
    p = Path(path)
    import yaml  # here: every command imports this module, few read YAML

    text = read_user_text(p, "config file", hint)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BestshotError(f"config file {p} is not valid YAML ({str(e).splitlines()[0]}) — fix the syntax") from None
    if data is None:
        raise BestshotError(
            f"config file {p} is empty (no settings) — write one `setting: value` per line, or leave the config out"
        )
    if not isinstance(data, dict):
        raise BestshotError(f"config file {p} must hold a mapping of setting: value, not a {type(data).__name__}")
    for key, value in data.items():
        check_finite(
            value, f"setting {key} in config file {p}", "write an ordinary number (YAML's .nan/.inf are not settings)"
        )
    return data


def dataclass_from_dict(cls: type[T], data: dict[str, Any], what: str = "config") -> T:
    """``cls(**data)`` after rejecting unknown keys; YAML lists become tuples where the default is a tuple."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BestshotError(
            f"unknown {what} setting(s) {', '.join(unknown)} — valid settings are: {', '.join(sorted(fields))}"
        )
    data = dict(data)
    for name, value in data.items():
        check_finite(value, f"{what} setting {name}", "give an ordinary number; NaN and infinity are not settings")
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(value, list) and (isinstance(default, tuple) or "tuple" in str(f.type)):
            data[name] = tuple(value)
    return cls(**data)
