"""Command-line options made from a settings dataclass's fields: one field with flag metadata, one option.

A field declared ``field(default=..., metadata={"help": "One sentence for --help.", "flag": "--flag-name"})``
is an option of every command built with :func:`field_options` (``bestshot generate``). Optional keys:

- ``"short"``: a one-letter alias (``"-n"``); ``"aliases"``: old names still accepted (``("--clip-min",)``);
- ``"min"`` / ``"max"``: the range a number must lie in; ``"choices"``: the values a setting may take;
- ``"repeatable"``: a ``tuple[X, ...]`` field given once per value (``--lora a --lora b``).

The option's type is the field's annotation: int, float, str; a bool becomes ``--flag/--no-flag`` (or the
pair the flag names, ``"--save-candidates/--best-only"``); ``X | None`` is X; ``tuple[X, ...]`` is repeatable.
Every option defaults to None, "not given", so that the command's own layers (a preset, the model's
defaults, a YAML file) decide what is not on the command line. Fields without "help" are no options.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import typer
from typer.models import ArgumentInfo, OptionInfo

FLAG_KEYS = frozenset({"help", "flag", "short", "aliases", "min", "max", "choices", "repeatable"})


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of dataclass ``cls`` that are command-line options (they carry ``"help"`` metadata)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _field(cls: type, name: str) -> dataclasses.Field:
    for f in flag_fields(cls):
        if f.name == name:
            return f
    raise TypeError(f"{cls.__name__}.{name} has no flag metadata (a 'help' and a 'flag')")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _value_type(cls: type, f: dataclasses.Field) -> tuple[Any, bool]:
    """(the type of one value, whether the option repeats) from the field's annotation."""
    tp = _hints(cls)[f.name]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else tp
    many = typing.get_origin(tp) in (tuple, list)
    if many:
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            args = ()
        tp = args[0] if args else None
    if typing.get_origin(tp) is Literal or tp in (int, float, str, bool) and not (many and tp is bool):
        return tp, many
    raise TypeError(
        f"{cls.__name__}.{f.name}: no command-line type for {_hints(cls)[f.name]} — a flag takes "
        "int, float, str, bool, one of them | None, or tuple[one of them, ...]"
    )


def _check(cls: type, f: dataclasses.Field) -> None:
    meta = f.metadata
    unknown = sorted(set(meta) - FLAG_KEYS)
    if unknown:
        raise TypeError(f"{cls.__name__}.{f.name}: unknown flag metadata {unknown} — known: {sorted(FLAG_KEYS)}")
    if not str(meta.get("flag", "")).startswith("--"):
        raise TypeError(f"{cls.__name__}.{f.name}: metadata needs a 'flag' such as '--{f.name.replace('_', '-')}'")


def option(cls: type, name: str, default: Any = None) -> OptionInfo:
    """The ``typer.Option`` of field ``name`` of dataclass ``cls`` (``default``: the value when not given)."""
    f = _field(cls, name)
    _check(cls, f)
    meta = f.metadata
    tp, _ = _value_type(cls, f)
    flag = meta["flag"]
    if tp is bool and "/" not in flag:
        flag = f"{flag}/--no-{flag[2:]}"
    decls = [flag, *([meta["short"]] if meta.get("short") else []), *meta.get("aliases", ())]
    return typer.Option(default, *decls, help=meta["help"], min=meta.get("min"), max=meta.get("max"))


def annotation(cls: type, name: str) -> Any:
    """The annotation typer reads for field ``name``'s option: its value type, a list when it repeats, | None."""
    f = _field(cls, name)
    tp, many = _value_type(cls, f)
    if "choices" in f.metadata:
        tp = Literal.__getitem__(tuple(f.metadata["choices"]))
    return (list[tp] if many else tp) | None


def _given(value: Any) -> Any:
    """An option's value as the field takes it: a repeated option's list as a tuple, none given as None."""
    if isinstance(value, (list, tuple)):
        return tuple(value) or None
    return value


def field_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command whose last parameter is ``**settings``: every flag field of ``cls`` becomes
    an option (after the command's arguments, before its own options) and arrives in ``settings`` under
    the field's name, None when not given."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        if len(own) == len(sig.parameters):
            raise TypeError(f"{fn.__name__} needs a **settings parameter to receive {cls.__name__}'s flags")
        names = [f.name for f in flag_fields(cls)]
        clash = sorted(set(names) & {p.name for p in own})
        if clash:
            raise TypeError(f"{fn.__name__}: parameter(s) {clash} are also {cls.__name__} fields with flags")
        made = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=option(cls, n), annotation=annotation(cls, n))
            for n in names
        ]
        at = next((i for i, p in enumerate(own) if not isinstance(p.default, ArgumentInfo)), len(own))
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:at] + made + own[at:]]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            settings = {n: _given(kwargs.pop(n, None)) for n in names}
            return fn(**kwargs, **settings)

        command.__signature__ = sig.replace(parameters=params)  # what typer reads
        return command

    return wrap


__all__ = ["FLAG_KEYS", "annotation", "field_options", "flag_fields", "option"]
