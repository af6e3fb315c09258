"""Named generation variants: ``NAME=FIELD=VALUE,FIELD=VALUE`` → ImgCfg overrides, each parsed by its field's type.

``plain=`` is the model's defaults; ``best16=n_images=16``; ``both=regions=auto,search=true``. A setting is an
``ImgCfg`` field name or its ``bestshot generate`` flag (``steps`` for ``steps_base``, ``n`` for ``n_images``;
dashes and underscores alike). Values follow the field's annotation: int, float, bool (true/false, on/off,
yes/no, 1/0), str, ``none`` for an optional field, ``A,B`` for a tuple field. Nothing here names a particular
field: whatever ``ImgCfg`` declares can be varied, and ``ImgCfg.validate`` judges the values.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..config import ImgCfg
from ..errors import BestshotError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SPLIT = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_-]*\s*=)")  # a comma that starts the next FIELD=
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# settings a variant cannot change: where outputs go (a variant's run saves nothing) and the preset (applied first)
_FIXED = ("out_dir", "log_jsonl", "save_candidates", "preset")


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]  # ImgCfg field → parsed value (empty: the model's defaults)
    text: str = ""  # the settings as given

    def apply(self, base: ImgCfg) -> ImgCfg:
        """``base`` with this variant's overrides, validated (a bad combination: one line naming the variant)."""
        try:
            return replace(base, **self.overrides).validate()
        except BestshotError as e:
            raise BestshotError(f"--variant {self.name}: {e}") from None


def _names() -> dict[str, str]:
    """Every accepted setting name → its ImgCfg field: field names and their flags' long names."""
    names: dict[str, str] = {}
    for f in dataclasses.fields(ImgCfg):
        if f.name in _FIXED:
            continue
        names[f.name] = f.name
        flag = str(f.metadata.get("flag", "")).split("/")[0]
        if flag.startswith("--"):
            names.setdefault(flag[2:].replace("-", "_"), f.name)
        short = str(f.metadata.get("short", ""))
        if short.startswith("-") and len(short) == 2:
            names.setdefault(short[1:], f.name)
    return names


def _one(tp: Any, raw: str) -> Any:
    v = raw.strip()
    if typing.get_origin(tp) is Literal:
        choices = [str(c) for c in typing.get_args(tp)]
        if v not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return v
    if tp is bool:
        if v.lower() in _TRUE:
            return True
        if v.lower() in _FALSE:
            return False
        raise ValueError("true or false")
    if tp is int:
        try:
            return int(v)
        except ValueError:
            raise ValueError("a whole number") from None
    if tp is float:
        try:
            return float(v)
        except ValueError:
            raise ValueError("a number") from None
    if tp is str:
        if not v:
            raise ValueError("a non-empty word")
        return v
    raise ValueError(f"a value this command can parse (the field is {tp}; set it in a --config file instead)")


def parse_value(field: str, raw: str) -> Any:
    """``raw`` as ImgCfg field ``field`` takes it (by its annotation); a bad value raises ValueError saying what
    was expected."""
    tp = typing.get_type_hints(ImgCfg)[field]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw.strip().lower() in ("none", "null"):
            return None
        tp = args[0] if len(args) == 1 else tp
    if typing.get_origin(tp) in (tuple, list):
        inner = (typing.get_args(tp) or (str,))[0]
        return tuple(_one(inner, v) for v in raw.split(",") if v.strip())
    return _one(tp, raw)


def parse_variant(text: str) -> Variant:
    """``"NAME=FIELD=VALUE,FIELD=VALUE"`` (``"NAME="``: the defaults) → a :class:`Variant`; an unknown setting or a
    bad value is one BestshotError naming the variant and the setting."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not _NAME.match(name):
        raise BestshotError(
            f"--variant {text!r} must look like NAME=SETTINGS (NAME: letters, digits, . _ -), "
            "e.g. --variant plain= --variant best16=n_images=16"
        )
    names = _names()
    overrides: dict[str, Any] = {}
    for part in (p for p in _SPLIT.split(rest) if p.strip()):
        key, eq, raw = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise BestshotError(f"--variant {name}: {part.strip()!r} must look like FIELD=VALUE, e.g. n_images=16")
        field = names.get(key)
        if field is None:
            near = difflib.get_close_matches(key, list(names), n=3)
            hint = f" — did you mean {' or '.join(near)}?" if near else " — give an ImgCfg field, e.g. n_images=16"
            raise BestshotError(f"--variant {name}: unknown setting {key!r} (no such ImgCfg field here){hint}")
        if field in overrides:
            raise BestshotError(f"--variant {name}: {key} is set twice — set it once")
        try:
            overrides[field] = parse_value(field, raw)
        except ValueError as e:
            raise BestshotError(f"--variant {name}: {key}={raw.strip()!r} is not {e}") from None
    return Variant(name, overrides, rest.strip())


def parse_variants(texts: typing.Sequence[str], base: ImgCfg) -> list[Variant]:
    """Every ``--variant``, parsed and checked against ``base`` (the model's defaults) before anything runs."""
    variants = [parse_variant(t) for t in texts]
    seen: set[str] = set()
    for v in variants:
        if v.name in seen:
            raise BestshotError(f"--variant {v.name} is given twice — give each variant its own name")
        seen.add(v.name)
        v.apply(base)
    return variants
