"""bestshot: generate many candidates, keep the best.

Public API (imported lazily so ``import bestshot`` stays cheap)::

    from bestshot import generate, ImgCfg
    result = generate("a red circle above a blue square")             # embedded model, CPU, offline
    result = generate("a lighthouse at dusk", preset="quality_1min")  # SDXL base + refiner
"""

__version__ = "0.1.0"

__all__ = ["generate", "ImgCfg", "PRESETS", "BestshotError", "get_scorer", "load_pipeline", "__version__"]


def __getattr__(name):
    if name == "generate":
        from .generation import generate

        return generate
    if name in ("ImgCfg", "PRESETS"):
        from . import config

        return getattr(config, name)
    if name == "BestshotError":
        from .errors import BestshotError

        return BestshotError
    if name == "get_scorer":
        from .scoring import get_scorer

        return get_scorer
    if name == "load_pipeline":
        from .models.loader import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'bestshot' has no attribute {name!r}")
