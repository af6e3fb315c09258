"""The ``bestshot`` command group: sub-commands imported when used, every command refusing NaN and infinity.

The other jobs' sub-commands live next to their code (``bestshot/train/cli.py``, ``server/cli.py``, ...), each
module with a typer ``app``. The group knows them by name (:class:`Lazy`) and imports a module only when one
of its commands is invoked or listed (``bestshot --help``) — the click "lazy group" pattern on typer's group,
so that ``bestshot generate`` starts without the trainers' torch or the server's FastAPI.
"""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
import typer.core

Command = Any  # a command or group of typer's own (vendored) click


@dataclass(frozen=True)
class Lazy:
    """Where a sub-command is: the typer ``app`` of ``module`` (a group of its own when ``command`` is None,
    else that one command of it), with ``extra`` commands of other modules added to the group as
    ``(name, module, command)``."""

    module: str
    command: str | None = None
    extra: tuple[tuple[str, str, str], ...] = ()

    def load(self, name: str) -> Command:
        group = typer.main.get_group(importlib.import_module(self.module).app)
        if self.command is not None:
            return group.commands[self.command]
        group.name = name
        for sub_name, module, command in self.extra:
            sub = copy.copy(Lazy(module, command).load(sub_name))
            sub.name = sub_name
            group.add_command(sub, sub_name)
        return group


def refuse_non_finite(cmd: Command) -> Command:
    """``cmd`` (and a group's commands) with NaN or infinite numbers refused as one clear error, naming the
    flag as typed. typer parses ``--guidance nan`` into ``float('nan')`` (so ``inf``); no bestshot setting
    means anything with them, and they would reach the log as non-JSON."""
    for sub in getattr(cmd, "commands", {}).values():
        refuse_non_finite(sub)
    fn = cmd.callback
    if fn is None or getattr(fn, "_bestshot_finite", False):
        return cmd
    from .jsonio import check_finite

    names = {}
    for p in cmd.params:
        longs = [o for o in p.opts if o.startswith("--")]
        if p.param_type_name == "option":  # every long name (an option and its old alias)
            names[p.name] = " / ".join(longs) if longs else p.opts[0]
        else:
            names[p.name] = p.name.upper()

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        for name, value in kwargs.items():
            check_finite(value, names.get(name, name), "pass an ordinary number; NaN and infinity are not settings")
        return fn(*args, **kwargs)

    checked._bestshot_finite = True
    cmd.callback = checked
    return cmd


class _Commands(MutableMapping):
    """A group's commands by name: those made already, then the lazy ones, imported on first access."""

    def __init__(self, made: dict[str, Command], lazy: dict[str, Lazy]) -> None:
        self._made = {name: refuse_non_finite(cmd) for name, cmd in made.items()}
        self._lazy = {name: spec for name, spec in lazy.items() if name not in made}

    def __getitem__(self, name: str) -> Command:
        if name not in self._made and name in self._lazy:
            self._made[name] = refuse_non_finite(self._lazy[name].load(name))
        return self._made[name]

    def __setitem__(self, name: str, cmd: Command) -> None:
        self._made[name] = cmd

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._made.pop(name, None)
        self._lazy.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        yield from self._made
        yield from (name for name in self._lazy if name not in self._made)

    def __len__(self) -> int:
        return len(self._made.keys() | self._lazy.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._made or name in self._lazy


class LazyGroup(typer.core.TyperGroup):
    """typer's group with the sub-commands of :attr:`lazy` (name → :class:`Lazy`) listed by name and
    imported on first use. Subclass it with ``lazy`` set and pass it as ``typer.Typer(cls=...)``."""

    lazy: ClassVar[dict[str, Lazy]] = {}

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _Commands(dict(self.commands), self.lazy)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(self.commands)  # names only: nothing is imported

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Command | None:
        return self.commands.get(cmd_name)  # imports the command's module the first time


__all__ = ["Lazy", "LazyGroup", "refuse_non_finite"]
