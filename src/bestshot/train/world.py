"""Moved: the procedural world is :mod:`bestshot.world` (this name stays for scripts written against it)."""

from bestshot.world import *  # noqa: F401,F403
from bestshot.world import __all__  # noqa: F401
