"""``--ray [ADDRESS]``: a flag whose value may be left out.

typer (click) options take a value or none, never "maybe one", so a command that offers ``--ray`` declares
``ray: Optional[str] = typer.Option(None, "--ray", ...)`` and ``cls=RayFlagCommand``; before parsing, a bare
``--ray`` gets the value ``local`` (a local Ray). The next word is taken as the address only when it looks
like one: ``local``, ``auto``, ``ray://…`` or ``HOST:PORT`` — so ``--ray`` may stand before a positional
argument (``bestshot eval generate --ray manifest.csv``) or another option.
"""

from __future__ import annotations

import re

import typer.core

from .cluster import LOCAL

FLAG = "--ray"
_ADDRESS = re.compile(r"^(local|auto|ray://\S+|\[?[A-Za-z0-9_.:-]*[A-Za-z0-9\]]:\d{1,5})$")


def looks_like_address(word: str) -> bool:
    return bool(_ADDRESS.match(word))


def normalise_ray_flag(args: list[str], flag: str = FLAG) -> list[str]:
    """``args`` with ``local`` after each bare ``flag`` (see the module docstring); ``--`` ends the options."""
    out: list[str] = []
    for i, word in enumerate(args):
        out.append(word)
        if word == "--":
            out.extend(args[i + 1 :])
            break
        if word == flag and (i + 1 >= len(args) or not looks_like_address(args[i + 1])):
            out.append(LOCAL)
    return out


class RayFlagCommand(typer.core.TyperCommand):
    """A typer command whose ``--ray`` may be given without a value (``app.command(cls=RayFlagCommand)``)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:  # noqa: ANN001 - click's signature
        return super().parse_args(ctx, normalise_ray_flag(list(args)))


__all__ = ["RayFlagCommand", "normalise_ray_flag", "looks_like_address"]
