"""A Ray worker's error, told on the driver in one line.

Ray hands a worker's exception back wrapped: ``RayTaskError`` (its ``cause`` is the original), Ray Data's
``UserCodeException`` (the original only as text in its message), or ``ActorDiedError`` when an actor's
constructor raised (a model that cannot load: the constructor's traceback as text). A ``BestshotError``
raised on the worker keeps its own message; anything else becomes one line naming its type and last line.
"""

from __future__ import annotations

import re

from ..errors import BestshotError


def remote_error(e: BaseException, what: str = "the Ray job") -> BestshotError:
    """``e`` (raised by Ray on the driver) as a one-line BestshotError; ``what`` names the job for others."""
    chain: list[BaseException] = []
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop(0)
        if x is None or any(x is y for y in chain):
            continue
        chain.append(x)
        inner = getattr(x, "cause", None)
        todo += [inner if isinstance(inner, BaseException) else None, x.__cause__, x.__context__]
    for x in chain:
        if isinstance(x, BestshotError) and not isinstance(getattr(x, "cause", None), BaseException):
            return BestshotError(str(x).strip().splitlines()[0] if str(x).strip() else f"{what}: error on a Ray worker")
    for x in chain:
        found = re.findall(r"BestshotError: ([^\n]+)", str(x))
        if found:
            return BestshotError(found[-1].strip())
    first = chain[0]
    text = [ln for ln in str(first).strip().splitlines() if ln.strip()]
    return BestshotError(
        f"{what} failed: {type(first).__name__}: {(text[-1] if text else '')[:300]} "
        "— see the Ray worker logs (`ray logs`)"
    )


__all__ = ["remote_error"]
