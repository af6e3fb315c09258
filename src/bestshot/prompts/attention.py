"""A1111's prompt attention syntax: ``(word:1.3)``, ``(word)`` ×1.1, ``[word]`` ÷1.1, ``\\(`` escapes, ``BREAK``.

The grammar is AUTOMATIC1111's ``parse_prompt_attention`` (modules/prompt_parser.py): round brackets multiply
the weight of what they enclose by 1.1 (or by the number after a colon), square brackets divide it by 1.1,
brackets nest (their factors multiply), unclosed brackets apply to the rest of the prompt, a backslash makes the
next bracket or backslash literal, and ``BREAK`` (a word of its own, upper case) ends the current 75-token chunk.
Only ``(...)`` closes a ``:weight``. Runs of equal weight are merged, as A1111 does.
"""

from __future__ import annotations

import re

BREAK = "BREAK"
ROUND, SQUARE = 1.1, 1 / 1.1

_TOKEN = re.compile(
    r"""
    \\[()\[\]\\] | \\          # an escaped bracket or backslash, or a lone backslash
    | [(\[]                    # an opening bracket
    | :([+-]?[.\d]+)\)         # ':1.3)' closes a round bracket with a weight
    | [)\]]                    # a closing bracket
    | [^\\()\[\]:]+            # plain text
    | :                        # a colon that is not a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_SYNTAX = re.compile(r"[()\[\]\\]|\bBREAK\b")


def parse(text: str) -> list[tuple[str, float]]:
    """``text`` as (fragment, weight) pairs in order; a chunk break is ``("BREAK", -1.0)``.

    >>> parse("a (red:1.5) [blurry] circle")
    [('a ', 1.0), ('red', 1.5), (' ', 1.0), ('blurry', 0.9090909090909091), (' circle', 1.0)]
    """
    parts: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for p in parts[start:]:
            if not p[2]:
                p[1] *= factor

    for m in _TOKEN.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            parts.append([tok[1:] if len(tok) > 1 else tok, 1.0, False])
        elif tok == "(":
            rounds.append(len(parts))
        elif tok == "[":
            squares.append(len(parts))
        elif weight is not None and rounds:
            try:
                scale(rounds.pop(), float(weight))
            except ValueError:  # ':..)' is not a number: text, as it reads
                parts.append([tok, 1.0, False])
        elif tok == ")" and rounds:
            scale(rounds.pop(), ROUND)
        elif tok == "]" and squares:
            scale(squares.pop(), SQUARE)
        else:
            for i, piece in enumerate(_BREAK.split(tok)):
                if i:
                    parts.append([BREAK, -1.0, True])
                parts.append([piece, 1.0, False])
    for start in rounds:
        scale(start, ROUND)
    for start in squares:
        scale(start, SQUARE)
    merged: list[list] = []
    for p in parts:
        if merged and merged[-1][1] == p[1] and not p[2] and not merged[-1][2]:
            merged[-1][0] += p[0]
        else:
            merged.append(p)
    return [(t, float(w)) for t, w, _ in merged] or [("", 1.0)]


def has_syntax(text: str) -> bool:
    """Whether ``text`` holds anything the attention syntax reads (a bracket, a backslash, ``BREAK``)."""
    return bool(_SYNTAX.search(text or ""))


def plain(text: str) -> str:
    """``text`` without the syntax: what the words say, for a scorer (``(red:1.5) circle`` → ``red circle``)."""
    if not has_syntax(text):
        return text
    words = "".join(" " if (t, w) == (BREAK, -1.0) else t for t, w in parse(text))
    return re.sub(r"\s+", " ", words).strip()
