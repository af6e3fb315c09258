"""The curation workflow: make stage 1 images, then take the survivors through stages 2 and 3.

Restart safety: every file is written atomically (temp file + rename), the metadata JSON is rewritten
atomically after each stage, and an image counts as done only when its ``final/`` file exists. So a
process killed at any point leaves whole files only; running ``upscale`` again redoes just the image
that was in flight (reusing its stage 2 result when that was already recorded) and the ones after it.
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import BestshotError
from ..prompts.build import BuiltPrompt
from ..store import format_parameters, save_png
from . import stages
from .config import SDXL_BUCKETS, CurateCfg, fit_to_model
from .layout import Layout
from .lora import Lora, LoraSwitcher, discover, pick
from .prompts import PromptFiles, assemble, sample_options


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("bestshot", "torch", "diffusers", "transformers", "peft"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class Workflow:
    """One configured workflow; models are loaded on first use and kept (through the loader's cache)."""

    cfg: CurateCfg
    say: Callable[[str], None] = print
    stop_requested: Callable[[], bool] = lambda: False
    _models: dict[str, Any] = field(default_factory=dict, repr=False)
    _upscaler: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.cfg = self._fit(self.cfg)
        c = self.cfg
        self.layout = Layout(c.path(c.paths.outputs))
        self.prompt_files = PromptFiles(
            c.path(c.paths.manual_prompt), c.path(c.paths.manual_negative_prompt), c.path(c.paths.prompt_options)
        )
        self.switcher = LoraSwitcher({"character": c.lora.character_strength, "style": c.lora.style_strength})

    def _fit(self, cfg: CurateCfg) -> CurateCfg:
        """The config's SDXL defaults replaced by a non-SDXL model's own (:func:`config.fit_to_model`)."""
        from ..models.registry import model_defaults, resolve_model, size_limits

        try:
            ref = resolve_model(cfg.model.base)
        except BestshotError:
            return cfg  # loading the model reports it
        fitted, notes = fit_to_model(
            cfg, model_defaults(cfg.model.base), size_limits(ref)[1], ref.family.name.startswith("sdxl")
        )
        if notes:
            self.say(
                f"{cfg.model.base}: its own defaults for the SDXL settings left in config.yaml: " + "; ".join(notes)
            )
        return fitted

    # ------------------------------------------------------------------ models
    @property
    def family(self):
        from ..models.registry import resolve_model

        return resolve_model(self.cfg.model.base).family

    def pipe(self) -> Any:
        if "pipe" not in self._models:
            from ..models.loader import load_pipeline

            c = self.cfg
            self._models["pipe"] = load_pipeline(
                c.model.base,
                dtype=c.torch_dtype_name,
                device=c.performance.device,
                memory=c.memory.strategy,
                scheduler=c.model.scheduler,
                compile=c.performance.compile_unet,
                vae_tiling=c.memory.vae_tiling,
                vae_slicing=c.memory.vae_slicing,
            )
            self._check_size()
        return self._models["pipe"]

    def refiner(self, wanted: bool, where: str) -> Any:
        if not wanted:
            return None
        if self.family.name != "sdxl":
            key = f"warned_refiner_{where}"
            if key not in self._models:
                self._models[key] = True
                warnings.warn(
                    f"{where}.use_refiner is set but {self.cfg.model.base!r} is not an SDXL base model; "
                    "running without the refiner"
                )
            return None
        if "refiner" not in self._models:
            from ..models.loader import load_refiner

            c = self.cfg
            self._models["refiner"] = load_refiner(
                self.pipe(),
                c.model.refiner,
                dtype=c.torch_dtype_name,
                device=c.performance.device,
                memory=c.memory.strategy,
            )
        return self._models["refiner"]

    def i2i(self) -> Any | None:
        if "i2i" not in self._models:
            i2i = stages.img2img_pipeline(self.pipe(), self.family)
            if i2i is None:
                warnings.warn(
                    f"the {self.family.name} model {self.cfg.model.base!r} has no img2img; stages 2 and 3 "
                    "upscale without diffusion refinement"
                )
            self._models["i2i"] = i2i
        return self._models["i2i"]

    def upscaler(self) -> Any:
        if self._upscaler is None:
            u = self.cfg.upscaler
            weights = self.cfg.path(u.weights) if u.weights else None
            self._upscaler = stages.make_upscaler(
                u.backend, u.model, weights, u.tile, u.tile_pad, self.cfg.performance.device
            )
        return self._upscaler

    def _check_size(self) -> None:
        if self.family.name == "sdxl" and self.cfg.base_size not in SDXL_BUCKETS.values():
            warnings.warn(
                f"base size {self.cfg.base_size[0]}x{self.cfg.base_size[1]} is not an SDXL bucket "
                f"({', '.join(f'{k} {w}x{h}' for k, (w, h) in SDXL_BUCKETS.items())}); SDXL may compose badly"
            )

    # ------------------------------------------------------------------ stage 1
    def new_seed(self, index: int) -> int:
        s = self.cfg.generation.seed
        return s + index if s is not None else secrets.randbelow(2**32)

    def stage1(self, index: int = 0) -> str:
        """Make one base image and its metadata; returns the tag."""
        c, g = self.cfg, self.cfg.generation
        t0 = time.perf_counter()
        seed = self.new_seed(index)
        manual, negative, options = self.prompt_files.read()
        chosen_options = sample_options(options, seed, g.max_prompt_options)
        chosen: list[Lora] = pick(discover(c.path(c.lora.dir)), seed) if c.lora.enabled else []
        pipe = self.pipe()
        applied = self.switcher.activate(pipe, chosen)
        triggers = [t for lo in applied for t in lo["trigger_words"]]
        built = assemble(manual, chosen_options, negative, triggers)
        w, h = c.base_size
        image = stages.txt2img(
            pipe,
            self.refiner(c.model.use_refiner, "model"),
            built,
            seed,
            w,
            h,
            c.model.steps,
            c.model.guidance,
            c.model.refiner_split,
        )
        record = {
            "prompt": built.sd_prompt,
            "negative": built.negative_prompt,
            "manual_prompt": manual,
            "prompt_options": chosen_options,
            "seed": seed,
            "loras": applied,
            "loras_skipped": [lo.name for lo in chosen if lo.path in self.switcher.failed],
            "models": self._model_ids(),
            "settings": c.to_dict(),
            "versions": package_versions(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "stages": {},
        }
        tag = self.layout.make().claim_tag(record)
        record = {**record, "tag": tag}
        path = self.layout.stage1(tag, w, h)
        save_png(
            path,
            image,
            self._parameters(record, seed, w, h, c.model.steps, c.model.guidance),
            {"tag": tag, "stage": "stage1", "seed": seed},
        )
        record["stages"]["stage1"] = {
            "file": _rel(path, self.layout.root),
            "size": [w, h],
            "seed": seed,
            "steps": c.model.steps,
            "guidance": c.model.guidance,
            "refiner": self.refiner(c.model.use_refiner, "model") is not None,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        self.layout.write_metadata(tag, record)
        self.say(f"stage1 {tag}: {path.name}  seed {seed}  {built.sd_prompt[:80]!r}")
        return tag

    # ------------------------------------------------------------------ stages 2 and 3
    def pending(self) -> list[tuple[str, Path]]:
        """Surviving stage 1 images (with metadata) that have no final image yet."""
        return [(tag, p) for tag, p in self.layout.survivors() if not self.layout.finals(tag)]

    def upscale(self, tag: str, stage1_path: Path) -> Path:
        """Stages 2 and 3 for one image; returns the final path."""
        c, g = self.cfg, self.cfg.generation
        record = self.layout.read_metadata(tag)
        with Image.open(stage1_path) as im:
            image = im.convert("RGB")
        bw, bh = image.size
        built = BuiltPrompt(record["prompt"], record["prompt"], record.get("negative", ""))
        seed = int(record["seed"])
        needs_model = g.stage2.enabled or g.stage3.enabled
        if needs_model:
            self._reactivate_loras(record)
        stages_rec = record.setdefault("stages", {})

        # ---- stage 2: Lanczos ×scale, img2img
        if g.stage2.enabled:
            s2 = g.stage2
            size = (bw * s2.scale, bh * s2.scale)
            done = stages_rec.get("stage2", {})
            reuse = self.layout.root / done["file"] if done.get("file") and done.get("size") == list(size) else None
            if reuse is not None and reuse.is_file():  # a killed run got this far: resume after stage 2
                with Image.open(reuse) as im:
                    image = im.convert("RGB")
                self.say(f"stage2 {tag}: reusing {reuse.name}")
            else:
                t0 = time.perf_counter()
                up = stages.lanczos(image, size)
                if g.save_intermediates:
                    save_png(self.layout.stage2_up(tag, *size), up)
                i2i = self.i2i()
                refiner = self.refiner(s2.use_refiner, "generation.stage2")
                image = (
                    up
                    if i2i is None
                    else stages.img2img(
                        i2i,
                        refiner,
                        up,
                        built,
                        seed + s2.seed_offset,
                        s2.strength,
                        s2.steps,
                        s2.guidance,
                        c.model.refiner_split,
                    )
                )
                image = stages.lanczos(image, size)
                path = self.layout.stage2(tag, *size)
                save_png(path, image)  # kept even without save_intermediates: it lets a killed run resume
                stages_rec["stage2"] = {
                    "file": _rel(path, self.layout.root),
                    "size": list(size),
                    "seed": seed + s2.seed_offset,
                    "strength": s2.strength,
                    "steps": s2.steps,
                    "guidance": s2.guidance,
                    "img2img": i2i is not None,
                    "refiner": refiner is not None,
                    "upscale": "lanczos",
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                self.layout.write_metadata(tag, record)
                self.say(f"stage2 {tag}: {path.name}")

        # ---- stage 3: Real-ESRGAN ×scale, tiled img2img
        s3 = g.stage3
        t0 = time.perf_counter()
        size = (bw * s3.scale, bh * s3.scale)
        upscaler = self.upscaler()
        image = stages.esrgan_upscale(upscaler, image, size)
        if g.save_intermediates:
            save_png(self.layout.stage3_up(tag, *size), image)
        tiles, refiner = 0, None
        i2i = self.i2i() if s3.enabled else None
        if i2i is not None:
            refiner = self.refiner(s3.use_refiner, "generation.stage3")
            base_seed = seed + s3.seed_offset

            def refine(tile: Image.Image, index: int) -> Image.Image:
                nonlocal tiles
                tiles += 1
                return stages.img2img(
                    i2i,
                    refiner,
                    tile,
                    built,
                    base_seed + index,
                    s3.strength,
                    s3.steps,
                    s3.guidance,
                    c.model.refiner_split,
                )

            image = stages.refine_tiles(
                image,
                refine,
                s3.tile_size,
                s3.tile_overlap,
                s3.blend_mode,
                self.layout.tiles_dir if s3.save_tiles else None,
                self.layout.tile_name(tag),
            )
        final = self.layout.final(tag, *size)
        stages_rec["stage3"] = {
            "size": list(size),
            "upscaler": getattr(upscaler, "name", "?"),
            "upscaler_model": getattr(upscaler, "model_name", None),
            "tiled_refinement": tiles > 0,
            "tiles": tiles,
            "tile_size": s3.tile_size,
            "tile_overlap": s3.tile_overlap,
            "blend_mode": s3.blend_mode,
            "strength": s3.strength,
            "steps": s3.steps,
            "refiner": refiner is not None,
            "seed": seed + s3.seed_offset,
            "seconds": round(time.perf_counter() - t0, 3),
            "file": _rel(final, self.layout.root),
        }
        record["final"] = _rel(final, self.layout.root)
        save_png(
            final,
            image,
            self._parameters(record, seed, *size, s3.steps, s3.guidance),
            {k: record.get(k) for k in ("tag", "prompt", "negative", "seed", "loras", "models", "stages")},
        )
        self.layout.write_metadata(tag, record)
        if not g.save_intermediates and "stage2" in stages_rec:  # it was kept only for resuming
            (self.layout.root / stages_rec["stage2"]["file"]).unlink(missing_ok=True)
        self.say(f"final  {tag}: {final.name}")
        return final

    def _reactivate_loras(self, record: dict[str, Any]) -> None:
        chosen = []
        for lo in record.get("loras", []):
            p = Path(lo["file"])
            if p.is_file():
                chosen.append(Lora(lo["kind"], lo["name"], p, tuple(lo.get("trigger_words", ()))))
            else:
                warnings.warn(f"LoRA {p} used for stage 1 is gone; stages 2 and 3 run without it")
        if self.i2i() is not None:
            self.switcher.activate(self.pipe(), chosen)

    # ------------------------------------------------------------------ loops
    def run(self, mode: str, count: int | None = None) -> list[str]:
        """``stage1`` / ``run``: make images until ``count`` or a stop request; ``upscale``: all pending."""
        done: list[str] = []
        from ..store import ensure_writable, remove_stale_tmp

        for sub in ("final", "intermediates") if mode == "upscale" else ("stage1", "metadata"):
            ensure_writable(self.layout.root / sub, "to the outputs folder")  # before any model loads
            remove_stale_tmp(self.layout.root / sub)
        if mode == "upscale":
            todo = self.pending()
            self.say(f"{len(todo)} stage1 image(s) to upscale" if todo else "nothing to upscale")
            for tag, p in todo:
                if self.stop_requested():
                    break
                self.upscale(tag, p)
                done.append(tag)
            return done
        if mode not in ("stage1", "run"):
            raise BestshotError(f"unknown mode {mode!r} — use stage1, upscale or run")
        i = 0
        while (count is None or i < count) and not self.stop_requested():
            tag = self.stage1(i)
            if mode == "run":
                self.upscale(tag, self.layout.stage1(tag, *self.cfg.base_size))
            done.append(tag)
            i += 1
        return done

    def stage1_on_ray(self, count: int, job: Any, progress: bool = True, console: Any = None) -> tuple[list[str], Any]:
        """``stage1 --count N --ray``: images ``0..N-1`` made by Ray workers, each running :meth:`stage1` of its
        own :class:`Workflow` (same seeds: ``generation.seed + index``). Returns the tags in index order and
        the run's :class:`~bestshot.scale.batch.BatchReport`."""
        import functools

        from ..scale.batch import prune_markers, run_rows, settings_digest
        from ..store import ensure_writable, remove_stale_tmp

        for sub in ("stage1", "metadata"):
            ensure_writable(self.layout.root / sub, "to the outputs folder")  # before any worker loads a model
            remove_stale_tmp(self.layout.root / sub)
        # rows are named by their settings: a retried row, or a rerun of the same command after the driver
        # died, finds the images already made by their done-markers; other settings start a folder of their own
        settings = settings_digest(self.cfg)
        journal = self.layout.root / "ray_journal"
        markers = journal / f"stage1-{settings}"
        rows = [{"key": i, "index": i, "settings": settings} for i in range(count)]
        if markers.is_dir():
            root = self.layout.root
            found = prune_markers(markers, rows, lambda r: bool(r.get("file")) and (root / r["file"]).is_file())
            if found:
                self.say(
                    f"{len(found)} of the {count} image(s) were made by an earlier stage1 --ray run with the "
                    f"same settings and are kept (to make them again, delete {markers})"
                )
        report = run_rows(
            rows,
            functools.partial(stage1_row_maker, self.cfg),
            job,
            title="stage1",
            progress=progress,
            console=console,
            journal=journal,
            markers=markers,
        )
        for r in report.results:
            self.say(f"stage1 {r['tag']}: {r['file']}  seed {r['seed']}  {r['prompt'][:80]!r}")
        return [r["tag"] for r in report.results], report

    # ------------------------------------------------------------------ metadata helpers
    def _model_ids(self) -> dict[str, Any]:
        c = self.cfg
        sdxl = self.family.name == "sdxl"
        uses = c.model.use_refiner or c.generation.stage2.use_refiner or c.generation.stage3.use_refiner
        return {
            "base": c.model.base,
            "family": self.family.name,
            "refiner": c.model.refiner if sdxl and uses else None,
            "upscaler": {
                "backend": c.upscaler.backend,
                "model": c.upscaler.model,
                "weights": c.upscaler.weights if c.upscaler.backend in ("torch", "auto") else None,
            },
        }

    def _parameters(self, record: dict[str, Any], seed: int, w: int, h: int, steps: int, guidance: float) -> str:
        from ..schedulers import sampler_label

        pipe = self._models.get("pipe")
        return format_parameters(
            record["prompt"],
            record.get("negative"),
            steps=steps,
            sampler=sampler_label(pipe.scheduler) if pipe is not None else None,
            cfg_scale=guidance,
            seed=seed,
            width=w,
            height=h,
            model=self.cfg.model.base,
            extra={"bestshot tag": record.get("tag")},
        )


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def stage1_row_maker(cfg: CurateCfg, output: Any = None) -> Callable[[dict[str, Any]], Any]:
    """The per-row function of ``stage1 --count N --ray`` in a Ray worker (the factory is
    ``functools.partial(stage1_row_maker, cfg)``): one :class:`Workflow` per worker (its pipeline loads once),
    :meth:`Workflow.stage1` per row, so the images and metadata are the single-process ones."""
    from ..scale.batch import RowOutput

    wf = Workflow(cfg, say=lambda msg: None)
    wf.pipe()

    def make(row: dict[str, Any]) -> Any:
        tag = wf.stage1(int(row["index"]))
        record = wf.layout.read_metadata(tag)
        return RowOutput(
            {
                "index": row["index"],
                "tag": tag,
                "seed": record["seed"],
                "prompt": record["prompt"],
                "file": record["stages"]["stage1"]["file"],
            }
        )

    return make
