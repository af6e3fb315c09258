"""ControlNet preprocessors that need no downloaded weights (OpenCV / NumPy), under sd-webui-controlnet's names.

A module spec is ``name`` or ``name:A[:B]`` (A and B are sd-webui-controlnet's ``threshold_a`` / ``threshold_b``,
e.g. ``canny:100:200``). Detectors that need model weights (depth, openpose, HED...) are named with the fix:
preprocess the image elsewhere and send it with module ``none``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from ..errors import BestshotError


def _gray(x: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)


def _rgb(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[:, :, None], 3, axis=2)


def canny(x: np.ndarray, low: float = 100, high: float = 200) -> np.ndarray:
    import cv2

    return _rgb(cv2.Canny(x, int(low), int(high)))


def invert(x: np.ndarray) -> np.ndarray:
    return 255 - x


def lineart_standard(x: np.ndarray) -> np.ndarray:
    """sd-webui-controlnet's weight-free line art: how much darker each pixel is than its blurred surround."""
    import cv2

    f = x.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(f, (0, 0), 6.0) - f, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 0.0)
    return _rgb((intensity * 127).clip(0, 255).astype(np.uint8))


def blur_gaussian(x: np.ndarray, sigma: float = 9.0) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(x, (0, 0), max(float(sigma), 0.01))


def tile_resample(x: np.ndarray, down: float = 1.0) -> np.ndarray:
    """Tile ControlNet's input: the image, optionally downsampled by ``down`` (then brought back to size)."""
    import cv2

    if down <= 1.0:
        return x
    h, w = x.shape[:2]
    small = cv2.resize(x, (max(1, int(w / down)), max(1, int(h / down))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def threshold(x: np.ndarray, level: float = 127) -> np.ndarray:
    return _rgb(np.where(_gray(x) > level, 255, 0).astype(np.uint8))


MODULES: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...]]] = {
    "none": (lambda x: x, ()),
    "canny": (canny, ("Canny Low Threshold", "Canny High Threshold")),
    "invert": (invert, ()),
    "lineart_standard": (lineart_standard, ()),
    "blur_gaussian": (blur_gaussian, ("Sigma",)),
    "tile_resample": (tile_resample, ("Down Sampling Rate",)),
    "threshold": (threshold, ("Binarization Threshold",)),
}
ALIASES = {"None": "none", "tile": "tile_resample", "blur": "blur_gaussian", "binary": "threshold"}
# sd-webui-controlnet modules that run a detector with downloaded weights (not shipped here)
NEEDS_WEIGHTS = (
    "depth",
    "normal",
    "openpose",
    "dw_openpose",
    "hed",
    "pidinet",
    "softedge",
    "mlsd",
    "lineart",
    "lineart_anime",
    "segmentation",
    "seg",
    "scribble",
    "shuffle",
    "mediapipe",
    "ip-adapter",
    "clip_vision",
    "reference",
    "inpaint",
    "recolor",
    "revision",
    "densepose",
    "anime_face",
    "t2ia",
    "instant_id",
    "instant-id",
    "zoe",
    "leres",
    "midas",
    "teed",
    "anyline",
)


def parse(spec: str) -> tuple[str, list[float]]:
    """``"canny:50:150"`` → ``("canny", [50.0, 150.0])``; sd-webui-controlnet's display names
    (``"invert (from white bg & black line)"``) are read as their module."""
    spec = (spec or "none").strip()
    name, *args = spec.split(":")
    name = name.split(" (")[0].strip()
    name = ALIASES.get(name, name)
    if name not in MODULES:
        low = name.lower()
        if any(low.startswith(p) for p in NEEDS_WEIGHTS):
            raise BestshotError(
                f"ControlNet preprocessor {name!r} needs detector weights (sd-webui-controlnet's annotators) that "
                f"bestshot does not ship — preprocess the image yourself and send it with module 'none' (built in: "
                f"{', '.join(MODULES)})"
            )
        raise BestshotError(f"unknown ControlNet preprocessor {name!r} — use one of: {', '.join(MODULES)}")
    try:
        values = [float(a) for a in args if a.strip() != ""]
    except ValueError:
        raise BestshotError(f"ControlNet preprocessor {spec!r}: the values after ':' must be numbers") from None
    fn, sliders = MODULES[name]
    if len(values) > len(sliders):
        raise BestshotError(f"ControlNet preprocessor {name!r} takes {len(sliders)} value(s), got {len(values)}")
    return name, values


def run(spec: str, image: Image.Image) -> Image.Image:
    """``image`` through the preprocessor ``spec`` names (RGB in, RGB out)."""
    name, values = parse(spec)
    if name == "none":
        return image
    fn, _ = MODULES[name]
    return Image.fromarray(np.ascontiguousarray(fn(np.asarray(image.convert("RGB")), *values)))


def module_detail() -> dict[str, dict]:
    """sd-webui-controlnet's ``module_detail`` for the built-in modules (no model needed, their sliders)."""
    defaults = {"canny": (100, 200), "blur_gaussian": (9.0,), "tile_resample": (1.0,), "threshold": (127,)}
    out = {}
    for name, (_, sliders) in MODULES.items():
        vals = defaults.get(name, ())
        out[name] = {
            "model_free": name == "none",
            "sliders": [
                {"name": s, "value": v, "min": 0, "max": 8 if name == "tile_resample" else 255}
                for s, v in zip(sliders, vals)
            ],
        }
    return out
