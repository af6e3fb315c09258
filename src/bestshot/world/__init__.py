"""The procedural world: vocabulary, scenes, renderer, captions, datasets and the oracle."""

from .scenes import *  # noqa: F401,F403
