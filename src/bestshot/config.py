"""Generation settings: the :class:`ImgCfg` dataclass, presets, YAML loading and validation.

The field names and defaults of ``ImgCfg`` are those of bestshot's original best-of-N API:
``n_images=4, seed_base=42, steps_base=40, guidance=7.5, clip_min=0.22, 1024x1024`` and the
style suffix / negative prompt it shows. ``clip_min`` is now ``score_min`` (the gate in the scorer's units;
unset = the scorer's default, 0.22 for a CLIP), ``clip_min`` its alias. Presets are plain dictionaries of
overrides, so a preset is never more than "these fields, these values".

Plain settings only: this module knows no model families and reads no model folder. A generate call's
final settings (preset → the model folder's ``bestshot_defaults.json`` → explicit overrides) are resolved
by :func:`bestshot.models.settings.resolve_config`, which knows models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass, field, fields, replace
from typing import Any

from bestshot import jsonio

from .errors import BestshotError
from .jsonio import check_finite
from .layout import check_regions_setting
from .schedulers import scheduler_spec
from .yaml_io import dataclass_from_dict

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
SD35_LARGE = "stabilityai/stable-diffusion-3.5-large"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CLIP_L14 = "openai/clip-vit-large-patch14"
EMBEDDED = "embedded"
SPATIAL = "+spatial"  # a scorer spec suffix: also check the relation a prompt states (scoring.spatial)
REGIONS = "+regions"  # a scorer spec suffix: also read each object of the prompt where it is (scoring.regions)
CONTROL_RESIZE = ("crop", "resize", "fill")

MEMORY_STRATEGIES = ("gpu", "model_offload", "sequential_offload")
DTYPES = ("auto", "float32", "float16", "bfloat16")

DEFAULT_BLOCKLIST = ("nsfw", "nude", "naked", "gore", "beheading", "child abuse")


MAX_SEED = 2**63 - 1  # the largest seed every torch generator takes


@dataclass
class ImgCfg:
    """Everything that decides what a ``generate`` call produces.

    The first block is the original best-of-N ``ImgCfg``; the rest were added since. A field with
    ``metadata={"help": ..., "flag": ...}`` is also a ``bestshot generate`` flag (bestshot.config_flags
    builds it from the annotation and the optional "short", "aliases", "min", "max", "choices", "repeatable").
    """

    preset: str = field(
        default="custom",
        metadata={"help": "fast | quality_1min | quality_max | custom | embedded", "flag": "--preset", "short": "-p"},
    )
    n_images: int = field(default=4, metadata={"help": "Number of candidates.", "flag": "--n-images", "short": "-n"})
    seed_base: int = field(
        default=42,
        metadata={"help": "Base seed; candidates use seed, seed+1, ...", "flag": "--seed", "short": "-s"},
    )
    steps_base: int = field(default=40, metadata={"help": "Denoising steps.", "flag": "--steps"})
    guidance: float = field(
        default=7.5, metadata={"help": "Classifier-free guidance scale.", "flag": "--guidance", "short": "-g"}
    )
    # The quality gate, in the scorer's own units (bestshot.scoring.gate): None = the scorer's default (a
    # CLIP cosine 0.22, the embedded model's own CLIP 0.35, an ensemble its first term's default). The
    # old name ``clip_min`` is an alias of it (constructor keyword, YAML key, attribute).
    score_min: float | None = field(
        default=None,
        metadata={
            "help": "Quality gate in the scorer's units (a cosine for a CLIP, the weighted sum for an ensemble); "
            "default: the scorer's own. --clip-min is its old name.",
            "flag": "--score-min",
            "aliases": ("--clip-min",),
        },
    )
    height: int = 1024
    width: int = 1024
    style_suffix: str = field(
        default=", cinematic lighting, 8k",
        metadata={"help": "Appended to the prompt (not scored).", "flag": "--style-suffix"},
    )
    negative_prompt: str = field(
        default="blurry, low quality, watermark", metadata={"help": "Negative prompt.", "flag": "--negative"}
    )

    model: str = field(
        default=SDXL_BASE,
        metadata={"help": "'embedded' (default), a pipeline folder or a hub id.", "flag": "--model", "short": "-m"},
    )
    refiner: bool = field(default=False, metadata={"help": "SDXL refiner (ensemble of experts).", "flag": "--refiner"})
    refiner_model: str = SDXL_REFINER
    refiner_split: float = 0.8  # base denoises [0, 0.8), refiner [0.8, 1] (ensemble of experts)
    scheduler: str | None = field(  # None keeps the pipeline's own scheduler
        default=None, metadata={"help": "euler, euler_a, dpmpp_2m, ddim, unipc, ...", "flag": "--scheduler"}
    )
    dtype: str = field(default="auto", metadata={"help": "auto | float32 | float16 | bfloat16", "flag": "--dtype"})
    memory: str = field(
        default="gpu", metadata={"help": "gpu | model_offload | sequential_offload", "flag": "--memory"}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the denoiser (CUDA).", "flag": "--compile"})
    # large decodes (e.g. 4096² after an upscale): the VAE decodes in overlapping tiles (memory bounded by
    # the tile) / one image of the batch at a time; a little slower, and tiles may show faint seams
    vae_tiling: bool = field(
        default=False,
        metadata={"help": "Decode in VAE tiles: large images in bounded memory.", "flag": "--vae-tiling"},
    )
    vae_slicing: bool = field(
        default=False,
        metadata={"help": "Decode the batch one image at a time (less peak memory).", "flag": "--vae-slicing"},
    )
    device: str | None = field(  # None: cuda when available, else cpu
        default=None, metadata={"help": "cuda, cuda:1, cpu (default: cuda if present).", "flag": "--device"}
    )
    max_batch: int | None = field(  # None = all candidates at once
        default=None, metadata={"help": "Largest batch per pipeline call.", "flag": "--max-batch"}
    )
    scorer: str | None = field(  # None: the model's own CLIP (embedded) or openai/clip-vit-large-patch14
        default=None,
        metadata={
            "help": "CLIP for ranking: 'embedded', a folder, a hub id, open_clip:NAME:TAG.",
            "flag": "--scorer",
        },
    )
    blocklist: tuple[str, ...] = DEFAULT_BLOCKLIST
    out_dir: str = field(default="images_out", metadata={"help": "Image folder (default images_out).", "flag": "--out"})
    log_jsonl: str = field(
        default="images_log.jsonl", metadata={"help": "JSONL run log (default images_log.jsonl).", "flag": "--log"}
    )
    save_candidates: bool = field(
        default=False, metadata={"help": "Save every candidate.", "flag": "--save-candidates/--best-only"}
    )
    # Batched GPU/CPU kernels are not bitwise batch-invariant (a matmul over 8 rows may round differently
    # from one over 2). With exact_best the kept image is re-rendered alone, so regenerating its seed
    # reproduces the file bit for bit; costs one single-image pass. Skipped for pipelines that declare
    # ``batch_invariant`` (the embedded model on CPU), whose batch render already is the solo one.
    # None (auto): re-render off CUDA only. On CUDA the kept image is the batch render: repeating the same
    # call reproduces it bit for bit, ``--seed S -n 1`` only up to the GPU's batch rounding (the record's
    # ``reproduce`` field says which holds).
    exact_best: bool | None = None
    # fp16 VAE decode where the VAE config asks for an fp32 upcast (checked; fp32 retry on overflow).
    # None (auto): on wherever the pipeline runs in fp16.
    vae_fp16: bool | None = None
    # Early pruning: start prune_start candidates, keep the n_images best after prune_at of the steps.
    prune_start: int | None = None
    prune_at: float = 0.3
    gate: bool = True  # False: keep the best whatever its score (evaluators, the A1111 routes)

    # Modes of the same best-of-N run (A1111's names and defaults): img2img from init_image, inpainting with
    # a mask, hires fix (each candidate upscaled and repainted at hires_denoise).
    init_image: str | None = field(
        default=None, metadata={"help": "Start every candidate from this image (img2img).", "flag": "--init-image"}
    )
    strength: float = field(
        default=0.75,
        metadata={
            "help": "How much of the init image is repainted: 0 keeps it, 1 ignores it.",
            "flag": "--strength",
            "min": 0.0,
            "max": 1.0,
        },
    )
    mask: str | None = field(
        default=None,
        metadata={"help": "Inpaint: repaint only where this mask is white (needs --init-image).", "flag": "--mask"},
    )
    mask_blur: int = field(
        default=4, metadata={"help": "Blur radius of the mask's edge, in pixels.", "flag": "--mask-blur", "min": 0}
    )
    inpainting_fill: int = field(
        default=1,
        metadata={
            "help": "What the masked part starts from: 0 fill, 1 original, 2 latent noise, 3 latent nothing.",
            "flag": "--inpainting-fill",
            "min": 0,
            "max": 3,
        },
    )
    inpaint_full_res: bool = field(
        default=False,
        metadata={"help": "Inpaint only the masked region, at the full generation size.", "flag": "--inpaint-full-res"},
    )
    inpaint_full_res_padding: int = field(
        default=32,
        metadata={
            "help": "Pixels around the mask kept as context with --inpaint-full-res.",
            "flag": "--inpaint-padding",
        },
    )
    hires_scale: float | None = field(
        default=None,
        metadata={
            "help": "Hires fix: upscale each candidate by this factor and repaint it (1 or unset: off).",
            "flag": "--hires-scale",
            "min": 1.0,
            "max": 4.0,
        },
    )
    hires_steps: int | None = field(
        default=None, metadata={"help": "Steps of the hires pass (unset: --steps).", "flag": "--hires-steps", "min": 1}
    )
    hires_denoise: float = field(
        default=0.7,
        metadata={"help": "Denoising strength of the hires pass.", "flag": "--hires-denoise", "min": 0.0, "max": 1.0},
    )

    # ---- prompting: LoRA, A1111 prompt weighting and long prompts, clip skip, textual-inversion embeddings
    loras: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "A LoRA to apply: a .safetensors file or a name in --lora-dir, with an optional :WEIGHT "
            "(default 1); repeat for several. A prompt's <lora:name:weight> tags add to these.",
            "flag": "--lora",
            "repeatable": True,
        },
    )
    lora_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder searched for LoRAs by name (default: models/Lora beside the output folder).",
            "flag": "--lora-dir",
        },
    )
    prompt_weighting: bool = field(
        default=True,
        metadata={
            "help": "Read A1111 prompt syntax ((word:1.3), [word], BREAK) and encode prompts over 77 tokens "
            "in chunks; off: the text goes to the encoder as is.",
            "flag": "--prompt-weighting",
        },
    )
    clip_skip: int = field(
        default=1,
        metadata={
            "help": "Text-encoder layers to stop at, A1111's way: 1 = the last layer, 2 = the penultimate.",
            "flag": "--clip-skip",
            "min": 1,
            "max": 12,
        },
    )
    embeddings_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of textual-inversion embeddings used when the prompt names one (default: "
            "embeddings beside the output folder).",
            "flag": "--embeddings-dir",
        },
    )
    # ---- conditioning and checks around the pipeline call (ControlNet, IP-Adapter, variation seeds, VAE, safety)
    controlnets: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "ControlNet model: a folder name in controlnet_dir, a diffusers ControlNet folder or a hub id "
            "(repeatable: one per --control-image).",
            "flag": "--controlnet",
            "repeatable": True,
        },
    )
    control_images: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Control image file of each --controlnet, in order.",
            "flag": "--control-image",
            "repeatable": True,
        },
    )
    control_modules: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Preprocessor of each control image: none, canny[:LOW:HIGH], invert, lineart_standard, "
            "blur_gaussian[:SIGMA], tile_resample[:DOWN], threshold[:LEVEL] (default none).",
            "flag": "--control-module",
            "repeatable": True,
        },
    )
    control_scales: tuple[float, ...] = field(
        default=(),
        metadata={"help": "Weight of each ControlNet (default 1.0).", "flag": "--control-scale", "repeatable": True},
    )
    control_start: tuple[float, ...] = field(
        default=(),
        metadata={
            "help": "Fraction of the steps where each ControlNet starts (default 0).",
            "flag": "--control-start",
            "repeatable": True,
        },
    )
    control_end: tuple[float, ...] = field(
        default=(),
        metadata={
            "help": "Fraction of the steps where each ControlNet stops (default 1).",
            "flag": "--control-end",
            "repeatable": True,
        },
    )
    control_resize: str = field(
        default="crop",
        metadata={
            "help": "How control images meet the output size: crop (fill, cut the overflow), resize "
            "(stretch) or fill (fit, pad).",
            "flag": "--control-resize",
            "choices": CONTROL_RESIZE,
        },
    )
    controlnet_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of ControlNet models (default: models/ControlNet beside the output folder).",
            "flag": "--controlnet-dir",
        },
    )
    ip_adapter: str | None = field(
        default=None,
        metadata={
            "help": "IP-Adapter: a weights file, a folder holding one (with image_encoder/) or a hub id.",
            "flag": "--ip-adapter",
        },
    )
    ip_adapter_weight_name: str | None = field(
        default=None,
        metadata={
            "help": "The IP-Adapter weights file inside --ip-adapter's folder or hub repository.",
            "flag": "--ip-adapter-weight-name",
        },
    )
    ip_image: str | None = field(
        default=None, metadata={"help": "Reference image of the IP-Adapter.", "flag": "--ip-image"}
    )
    ip_scale: float = field(
        default=1.0, metadata={"help": "Weight of the IP-Adapter image (0 = off).", "flag": "--ip-scale", "min": 0.0}
    )
    subseed: int | None = field(
        default=None,
        metadata={
            "help": "Variation seed (A1111): candidate i blends noise of seed+i toward subseed+i.",
            "flag": "--subseed",
            "min": 0,
        },
    )
    subseed_strength: float = field(
        default=0.0,
        metadata={
            "help": "How far toward the variation seed's noise (0 = none, 1 = all of it).",
            "flag": "--subseed-strength",
            "min": 0.0,
            "max": 1.0,
        },
    )
    vae: str | None = field(
        default=None,
        metadata={
            "help": "Custom VAE for this run: a diffusers VAE folder, a .safetensors file, a name in vae_dir or "
            "a hub id.",
            "flag": "--vae",
        },
    )
    vae_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of VAEs (default: models/VAE beside the output folder).", "flag": "--vae-dir"},
    )
    safety_checker: str | None = field(
        default=None,
        metadata={
            "help": "Image safety checker (a CompVis/stable-diffusion-safety-checker folder or hub id): "
            "flagged candidates rank last and are never saved.",
            "flag": "--safety-checker",
        },
    )
    # Composition: each object of a layout drawn from its own phrase inside its box (bestshot.prompts.regions).
    # A str on the command line; from Python or HTTP a layout.json dict is accepted too.
    regions: str = field(
        default="off",
        metadata={
            "help": "Region-steered sampling: 'auto' (plan object boxes from the prompt), 'off', or a layout.json "
            "file; each object's phrase is drawn inside its box.",
            "flag": "--regions",
        },
    )
    # ---- search over noises (bestshot.search): a larger pool starts, the best previews finish with branches
    search: bool = field(
        default=False,
        metadata={
            "help": "Search instead of N independent draws: start --search-pool noises, score their previews "
            "after --search-at of the steps, finish the best with branches around them.",
            "flag": "--search",
        },
    )
    search_pool: int | None = field(
        default=None,
        metadata={"help": "Noises --search starts (default: twice --n-images).", "flag": "--search-pool", "min": 1},
    )
    search_at: float = field(
        default=0.25,
        metadata={
            "help": "Fraction of the steps after which --search scores previews and branches.",
            "flag": "--search-at",
            "min": 0.0,
            "max": 1.0,
        },
    )
    search_branches: int = field(
        default=1,
        metadata={
            "help": "Branches per kept noise of --search (0: no branches, plain pruning).",
            "flag": "--search-branches",
            "min": 0,
        },
    )
    search_keep_noise: float = field(
        default=0.8,
        metadata={
            "help": "How much of its parent's noise a --search branch keeps (0: all fresh; below 1).",
            "flag": "--search-keep-noise",
            "min": 0.0,
            "max": 1.0,
        },
    )
    # ---- repair after the pick (bestshot.repair): keep the objects the scorer reads as right, repaint the rest
    repair: bool = field(
        default=False,
        metadata={
            "help": "After ranking, keep the objects the scorer reads as right in the best image and repaint the "
            "rest (--repair-tries repaints a round, --repair-rounds rounds); needs a scorer that locates objects "
            "(a '+regions' scorer).",
            "flag": "--repair",
        },
    )
    repair_tries: int = field(
        default=4,
        metadata={
            "help": "Repaints a --repair round draws (each with its own seed).",
            "flag": "--repair-tries",
            "min": 1,
        },
    )
    repair_rounds: int = field(
        default=2,
        metadata={
            "help": "Rounds of --repair (each repairs the best image so far; a round the scorer finds nothing to "
            "repair in ends it).",
            "flag": "--repair-rounds",
            "min": 1,
        },
    )
    clip_min: InitVar[float | None] = None  # old name of score_min: given, it sets score_min

    def __post_init__(self, clip_min: float | None) -> None:
        # dataclasses.replace() passes the alias's current value back in (an _AliasRead): only a value given
        # by the caller sets score_min
        if clip_min is not None and not isinstance(clip_min, (property, _AliasRead)):
            self.score_min = clip_min
        for name in _TUPLE_FIELDS:  # YAML/JSON lists and a lone value become tuples; "0.5" becomes 0.5
            v = getattr(self, name)
            if v is None or isinstance(v, (str, int, float)):
                v = () if v is None else (v,)
            if name in _FLOAT_TUPLES:
                v = tuple(_as_float(x) for x in v)
            setattr(self, name, tuple(v))

    def validate(self) -> ImgCfg:
        """Raise :class:`BestshotError` naming the first bad field and how to fix it."""
        for f in fields(self):
            check_finite(getattr(self, f.name), f.name, "give an ordinary number; NaN and infinity are not settings")
        if not isinstance(self.n_images, int) or self.n_images < 1:
            raise BestshotError(
                f"n_images must be a whole number >= 1 (got {self.n_images!r}) — ask for at least one candidate"
            )
        for name in ("height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 8 or v % 8:
                raise BestshotError(f"{name} must be a positive multiple of 8 (got {v!r}) — e.g. --size 1024x1024")
        if not isinstance(self.steps_base, int) or self.steps_base < 1:
            raise BestshotError(f"steps_base must be >= 1 (got {self.steps_base!r})")
        if self.guidance < 0:
            raise BestshotError(f"guidance must be >= 0 (got {self.guidance!r})")
        v = self.score_min
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise BestshotError(
                f"score_min (alias clip_min) must be a number or unset (got {self.score_min!r}) — "
                "it is the quality gate in the scorer's units"
            )
        if self.memory not in MEMORY_STRATEGIES:
            raise BestshotError(f"memory must be one of {', '.join(MEMORY_STRATEGIES)} (got {self.memory!r})")
        if self.dtype not in DTYPES:
            raise BestshotError(f"dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        if not 0.0 < self.refiner_split < 1.0:
            raise BestshotError(f"refiner_split must lie strictly between 0 and 1 (got {self.refiner_split!r})")
        if self.max_batch is not None and self.max_batch < 1:
            raise BestshotError(f"max_batch must be >= 1 or unset (got {self.max_batch!r})")
        if self.prune_start is not None and (
            not isinstance(self.prune_start, int) or self.prune_start <= self.n_images
        ):
            raise BestshotError(
                f"prune_start must be larger than n_images={self.n_images} (got {self.prune_start!r}) "
                "— it is how many candidates start before pruning"
            )
        if not 0.0 < self.prune_at < 1.0:
            raise BestshotError(
                f"prune_at is a fraction of the steps, strictly between 0 and 1 (got {self.prune_at!r})"
            )
        if self.prune_start and self.refiner:
            raise BestshotError(
                "early pruning and the refiner cannot be combined yet — drop --refiner or --prune-start"
            )
        if self.scheduler:
            spec = scheduler_spec(self.scheduler)
            if isinstance(self.steps_base, int) and self.steps_base < spec.sampler.min_steps:
                raise BestshotError(
                    f"{spec.sampler.label} needs at least {spec.sampler.min_steps} steps (got "
                    f"{self.steps_base}) — raise --steps or pick another --scheduler"
                )
        if not isinstance(self.seed_base, int) or self.seed_base < 0:
            raise BestshotError(f"seed_base must be a non-negative whole number (got {self.seed_base!r})")
        self._validate_modes()
        _check_search(self)
        _check_repair(self)
        last = self.seed_base + max(self.n_images, self.prune_start or 0, self.search_seeds) + self.repair_seeds - 1
        if last > MAX_SEED:  # candidates use seed, seed+1, ...; torch's generators take 64-bit seeds
            raise BestshotError(
                f"seed_base {self.seed_base} is too large: the candidates' seeds must stay at most "
                f"{MAX_SEED} (2**63 - 1) — give a smaller --seed"
            )
        self._validate_regions()
        _check_conditioning(self)

        if isinstance(self.clip_skip, bool) or not isinstance(self.clip_skip, int) or not 1 <= self.clip_skip <= 12:
            raise BestshotError(
                f"clip_skip must be a whole number from 1 to 12 (got {self.clip_skip!r}) — 1 is the last text-encoder "
                "layer, 2 the penultimate (A1111's 'Clip skip')"
            )
        if isinstance(self.loras, str) or not all(isinstance(x, str) and x.strip() for x in self.loras):
            raise BestshotError(
                f"loras must be a list of LoRA files or names, each with an optional :WEIGHT (got {self.loras!r})"
            )
        return self

    def _validate_regions(self) -> None:
        """``regions``: a valid setting (a layout file is read here), on text-to-image draws only."""
        check_regions_setting(self.regions)
        if self.regions in (None, "off"):
            return
        for name, on, why in (
            ("init_image", self.init_image is not None, "img2img and inpainting draw without regions"),
            ("prune_start", bool(self.prune_start), "early pruning draws without regions"),
            ("controlnets", bool(self.controlnets), "ControlNet's pipeline is not steered by region"),
            ("ip_adapter", self.ip_adapter is not None, "IP-Adapter's attention processors replace the regions'"),
        ):
            if on:
                raise BestshotError(f"--regions cannot be combined with {name} ({why}) — drop one of them")

    def _validate_modes(self) -> None:
        """The img2img / inpaint / hires fields: one line naming the field (files are checked when read)."""

        def number(name: str, low: float, high: float | None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low or (high is not None and v > high):
                span = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
                raise BestshotError(f"{name} must be a number {span} (got {v!r})")

        number("strength", 0.0, 1.0)
        number("hires_denoise", 0.0, 1.0)
        number("mask_blur", 0, None)
        number("inpaint_full_res_padding", 0, None)
        if self.inpainting_fill not in (0, 1, 2, 3) or isinstance(self.inpainting_fill, bool):
            raise BestshotError(
                f"inpainting_fill must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing) "
                f"(got {self.inpainting_fill!r})"
            )
        if self.mask is not None and self.init_image is None:
            raise BestshotError("mask needs an init_image to repaint — give --init-image too")
        if self.hires_scale is not None:
            number("hires_scale", 1.0, 4.0)
            if self.hires_scale > 1 and self.init_image is not None:
                raise BestshotError("hires_scale applies to text-to-image runs — drop --hires-scale or --init-image")
        if self.hires_steps is not None and (not isinstance(self.hires_steps, int) or self.hires_steps < 1):
            raise BestshotError(f"hires_steps must be a whole number >= 1 or unset (got {self.hires_steps!r})")
        if (self.init_image is not None or self.hires) and self.prune_start:
            raise BestshotError("early pruning works on text-to-image runs only — drop --prune-start")

    @property
    def search_seeds(self) -> int:
        """How many consecutive seeds a ``search`` run uses (its pool, then its branches); 0 without one."""
        if not self.search:
            return 0
        pool = self.search_pool or 2 * self.n_images
        return pool + self.n_images - min(pool, -(-self.n_images // (1 + self.search_branches)))

    @property
    def repair_seeds(self) -> int:
        """How many seeds ``repair`` uses after the draw's (every round's tries); 0 without it."""
        return self.repair_tries * self.repair_rounds if self.repair else 0

    @property
    def hires(self) -> bool:
        """Whether the hires fix is on."""
        return self.hires_scale is not None and self.hires_scale > 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blocklist"] = list(self.blocklist)
        d["loras"] = list(self.loras)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImgCfg:
        data = dict(data)
        if "clip_min" in data:  # the old key: same setting as score_min
            old = check_finite(
                data.pop("clip_min"),
                "generation setting clip_min",
                "give an ordinary number; NaN and infinity are not settings",
            )
            if data.get("score_min") is not None and old is not None and data["score_min"] != old:
                raise BestshotError(
                    f"clip_min {old!r} and score_min {data['score_min']!r} disagree — they are one "
                    "setting (clip_min is its old name): give only score_min"
                )
            data["score_min"] = old if old is not None else data.get("score_min")
        if data.get("blocklist") is not None:
            data["blocklist"] = tuple(data["blocklist"])
        if isinstance(data.get("loras"), list):
            data["loras"] = tuple(data["loras"])
        return dataclass_from_dict(cls, data, "generation")


class _AliasRead(float):
    """``cfg.clip_min`` as read: the value of score_min, marked so that replace() does not treat it as given."""


# the old name reads (and sets) the same value as score_min
ImgCfg.clip_min = property(  # type: ignore[assignment]
    lambda self: None if self.score_min is None else _AliasRead(self.score_min),
    lambda self, v: setattr(self, "score_min", v),
    doc="Old name of score_min (kept for one release).",
)


_TUPLE_FIELDS = ("controlnets", "control_images", "control_modules", "control_scales", "control_start", "control_end")
_FLOAT_TUPLES = ("control_scales", "control_start", "control_end")


def _as_float(x: Any) -> Any:
    try:
        return float(x) if isinstance(x, str) else x
    except ValueError:
        return x  # validate() names it


def _check_conditioning(cfg: ImgCfg) -> None:
    """The ControlNet / IP-Adapter / variation-seed / VAE / safety fields: one line naming the first bad one."""
    n = len(cfg.controlnets)
    if len(cfg.control_images) != n:
        raise BestshotError(
            f"{n} --controlnet and {len(cfg.control_images)} --control-image given — give one control image per "
            "ControlNet, in the same order"
        )
    for name in ("control_modules", "control_scales", "control_start", "control_end"):
        v = getattr(cfg, name)
        if len(v) > n or (v and len(v) not in (1, n)):
            raise BestshotError(
                f"{name} has {len(v)} values for {n} ControlNet(s) — give one per --controlnet or one for all"
            )
    for name, lo, hi in (("control_scales", 0.0, 10.0), ("control_start", 0.0, 1.0), ("control_end", 0.0, 1.0)):
        for x in getattr(cfg, name):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not lo <= x <= hi:
                raise BestshotError(f"{name} values must be numbers from {lo:g} to {hi:g} (got {x!r})")
    for a, b in zip(cfg.control_start or (0.0,) * n, cfg.control_end or (1.0,) * n):
        if a >= b:
            raise BestshotError(f"control_start {a:g} must be below control_end {b:g} — a ControlNet needs some steps")
    if cfg.control_resize not in CONTROL_RESIZE:
        raise BestshotError(f"control_resize must be one of {', '.join(CONTROL_RESIZE)} (got {cfg.control_resize!r})")
    if (cfg.ip_adapter is None) != (cfg.ip_image is None):
        raise BestshotError("--ip-adapter and --ip-image go together — give both (the adapter and its reference image)")
    if isinstance(cfg.ip_scale, bool) or not isinstance(cfg.ip_scale, (int, float)) or not 0 <= cfg.ip_scale <= 10:
        raise BestshotError(f"ip_scale must be a number from 0 to 10 (got {cfg.ip_scale!r})")
    s = cfg.subseed_strength
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
        raise BestshotError(f"subseed_strength must lie between 0 and 1 (got {s!r})")
    sub = cfg.subseed
    if sub is not None and (isinstance(sub, bool) or not isinstance(sub, int) or sub < 0):
        raise BestshotError(f"subseed must be a non-negative whole number (got {sub!r})")
    if sub is not None and sub + max(cfg.n_images, 1) - 1 > MAX_SEED:  # candidates use subseed, subseed+1, ...
        raise BestshotError(f"subseed {sub} is too large: the candidates' variation seeds must stay at most {MAX_SEED}")
    if s > 0 and cfg.subseed is None:
        raise BestshotError("subseed_strength needs a --subseed (the variation seed to blend toward)")
    if (n or cfg.ip_adapter or s > 0) and cfg.prune_start:
        raise BestshotError(
            "early pruning cannot be combined with ControlNet, IP-Adapter or variation seeds yet — drop --prune-start"
        )
    if n and cfg.refiner:
        raise BestshotError("ControlNet and the refiner cannot be combined yet — drop --refiner or --controlnet")
    custom_vae = cfg.vae and str(cfg.vae).strip().lower() not in ("automatic", "none", "")
    if (n or cfg.ip_adapter or s > 0 or custom_vae) and (cfg.init_image or (cfg.hires_scale or 1) > 1):
        raise BestshotError(
            "ControlNet, IP-Adapter, variation seeds and a custom VAE work on text-to-image only yet — drop them or "
            "--init-image / --hires-scale"
        )
    if cfg.vae and str(cfg.vae).strip().lower() not in ("automatic", "none", "") and (cfg.refiner or cfg.prune_start):
        raise BestshotError("a custom --vae cannot be combined with --refiner or --prune-start yet — drop one")


class _AliasRead(float):
    """``cfg.clip_min`` as read: the value of score_min, marked so that replace() does not treat it as given."""


# the old name reads (and sets) the same value as score_min
ImgCfg.clip_min = property(  # type: ignore[assignment]
    lambda self: None if self.score_min is None else _AliasRead(self.score_min),
    lambda self, v: setattr(self, "score_min", v),
    doc="Old name of score_min (kept for one release).",
)


def _check_search(cfg: ImgCfg) -> None:
    """The ``search`` fields, and what a search cannot be combined with: one line naming the fix."""
    for name, low in (("search_pool", 1), ("search_branches", 0)):
        v = getattr(cfg, name)
        if (v is not None or name == "search_branches") and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise BestshotError(f"{name} must be a whole number >= {low} (got {v!r})")
    for name, top in (("search_at", "1"), ("search_keep_noise", "1 (1 would copy the parent)")):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1 or (name == "search_at" and v == 0):
            low = "above 0" if name == "search_at" else "from 0"
            raise BestshotError(f"{name} must be a number {low} and below {top} (got {v!r})")
    if not cfg.search:
        return
    if not isinstance(cfg.search, bool):
        raise BestshotError(f"search is on or off (true/false), got {cfg.search!r}")
    if cfg.search_pool is not None and cfg.search_pool < cfg.n_images:
        raise BestshotError(
            f"search_pool {cfg.search_pool} is smaller than n_images={cfg.n_images} — the pool is how many noises "
            "start, n_images how many finish: give --search-pool at least --n-images"
        )
    clash = [
        flag
        for flag, on in (
            ("--prune-start", cfg.prune_start),
            ("--refiner", cfg.refiner),
            ("--init-image", cfg.init_image is not None),
            ("--hires-scale", cfg.hires),
            ("--controlnet", cfg.controlnets),
            ("--ip-adapter", cfg.ip_adapter),
            ("--subseed-strength", cfg.subseed_strength > 0),
            ("--vae", cfg.vae and str(cfg.vae).strip().lower() not in ("automatic", "none", "")),
        )
        if on
    ]
    if clash:
        raise BestshotError(f"--search works on plain text-to-image runs only — drop {clash[0]} or --search")


def _check_repair(cfg: ImgCfg) -> None:
    """The ``repair`` fields, and what a repair cannot follow: one line naming the fix."""
    for name in ("repair_tries", "repair_rounds"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BestshotError(f"{name} must be a whole number >= 1 (got {v!r})")
    if not isinstance(cfg.repair, bool):
        raise BestshotError(f"repair is on or off (true/false), got {cfg.repair!r}")
    if not cfg.repair:
        return
    clash = [
        flag
        for flag, on in (
            ("--refiner", cfg.refiner),
            ("--init-image", cfg.init_image is not None),
            ("--hires-scale", cfg.hires),
            ("--controlnet", cfg.controlnets),
            ("--ip-adapter", cfg.ip_adapter),
        )
        if on
    ]
    if clash:
        raise BestshotError(
            f"--repair repaints text-to-image candidates only — drop {clash[0]} or --repair (its repaint would "
            "not see it)"
        )


def merge(base: ImgCfg, data: dict[str, Any]) -> dict[str, Any]:
    """``base`` as a dict with ``data``'s keys over it (unknown keys refused)."""
    merged = base.to_dict()
    data = dict(data)
    if "clip_min" in data:
        merged["score_min"] = data.pop("clip_min")
    merged.update(data)
    merged["blocklist"] = tuple(merged["blocklist"])
    merged["loras"] = tuple(merged.get("loras") or ())
    ImgCfg.from_dict(merged)  # validates the keys
    return merged


# Presets: what each one changes relative to the ImgCfg defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "fast": dict(model=SDXL_BASE, refiner=False, height=768, width=768, n_images=2, steps_base=25, guidance=7.0),
    "quality_1min": dict(
        model=SDXL_BASE, refiner=True, height=1024, width=1024, n_images=4, steps_base=40, guidance=7.5
    ),
    "quality_max": dict(
        model=SD35_LARGE, refiner=False, height=1024, width=1024, n_images=4, steps_base=28, guidance=3.5
    ),
    "custom": dict(),
    # The embedded model: its folder's bestshot_defaults.json fills in size, steps and guidance; its
    # clip_min is the default gate of the model's own CLIP (bestshot.scoring.gate), not a setting here.
    "embedded": dict(model=EMBEDDED, refiner=False, n_images=8, style_suffix="", negative_prompt=""),
}


def plain_preset(name: str) -> ImgCfg:
    """The ``ImgCfg`` of a named preset as :data:`PRESETS` writes it, before any model's own defaults
    (:func:`bestshot.models.settings.preset_config` adds those)."""
    if name not in PRESETS:
        raise BestshotError(f"unknown preset {name!r} — choose one of: {', '.join(PRESETS)}")
    return replace(ImgCfg(), preset=name, **PRESETS[name])


# Keys of a model's bestshot_defaults.json that map onto ImgCfg fields.
_DEFAULT_KEYS = {
    "steps": "steps_base",
    "num_inference_steps": "steps_base",
    "guidance": "guidance",
    "guidance_scale": "guidance",
    "height": "height",
    "width": "width",
    "scheduler": "scheduler",
    "n_images": "n_images",
    "repair": "repair",
}


def apply_model_defaults(cfg: ImgCfg, defaults: dict[str, Any]) -> ImgCfg:
    updates = {_DEFAULT_KEYS[k]: v for k, v in defaults.items() if k in _DEFAULT_KEYS}
    return replace(cfg, **updates)


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` → ``(width, height)``; a clear error otherwise."""
    try:
        w, h = (int(p) for p in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise BestshotError(f"size must look like WIDTHxHEIGHT, e.g. 1024x1024 (got {text!r})") from None
    for name, v in (("width", w), ("height", h)):
        if v < 8 or v % 8:
            raise BestshotError(f"{name} {v} is not a positive multiple of 8 — e.g. --size 1024x1024")
    return w, h


def dump_json(cfg: ImgCfg) -> str:
    return jsonio.dumps(cfg.to_dict(), sort_keys=True)
