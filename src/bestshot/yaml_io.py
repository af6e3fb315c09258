"""Reading YAML configs into dataclasses, with errors that name the file, the key and the fix.

Every config in bestshot (``ImgCfg``, the training configs, the captioner, the curation workflow) is a
dataclass; these two functions are the only place YAML is read and unknown keys are rejected.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import BestshotError
from .jsonio import check_finite

T = TypeVar("T")


def read_yaml_mapping(path: str | os.PathLike, hint: str = "pass an existing YAML file") -> dict[str, Any]:
    """The mapping in YAML file ``path`` ({} for an empty file); any problem is one BestshotError."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BestshotError(f"config file {p} does not exist — {hint}") from None
    except OSError as e:
        raise BestshotError(f"cannot read config file {p}: {e.strerror} — check the path") from None
    except yaml.YAMLError as e:
        raise BestshotError(f"config file {p} is not valid YAML ({str(e).splitlines()[0]}) — fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BestshotError(f"config file {p} must hold a mapping of setting: value, not a {type(data).__name__}")
    for key, value in data.items():
        check_finite(value, f"setting {key} in config file {p}", "write an ordinary number (YAML's .nan/.inf are not settings)")
    return data


def dataclass_from_dict(cls: type[T], data: dict[str, Any], what: str = "config") -> T:
    """``cls(**data)`` after rejecting unknown keys; YAML lists become tuples where the default is a tuple."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BestshotError(f"unknown {what} setting(s) {', '.join(unknown)} — valid settings are: "
                            f"{', '.join(sorted(fields))}")
    data = dict(data)
    for name, value in data.items():
        check_finite(value, f"{what} setting {name}", "give an ordinary number; NaN and infinity are not settings")
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(value, list) and (isinstance(default, tuple) or "tuple" in str(f.type)):
            data[name] = tuple(value)
    return cls(**data)
