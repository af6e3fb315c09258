"""The record of one best-of-N run: :class:`RunRecord`, whose :meth:`~RunRecord.to_dict` is the JSONL log line
(and the dict ``generate()`` returns). Every run, whatever its mode or caller, is recorded by this one type.

Old names kept for one release: ``best_clip`` (= ``best_score``), ``best_clip_score`` / a candidate's
``clip_score`` (``100·max(score, 0)`` for a cosine scorer, None otherwise) and a candidate's ``clip``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .config import ImgCfg
from .models import conditioning
from .scoring import clip_score_100


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _round(x: float | None, k: int = 6) -> float | None:
    return None if x is None else round(float(x), k)


@dataclass
class Candidate:
    seed: int
    score: float | None
    path: str | None = None
    steps_done: int | None = None
    nsfw: bool | None = None  # the image safety check's verdict (None: no check ran)

    def to_dict(self, cosine: bool) -> dict[str, Any]:
        d: dict[str, Any] = {
            "seed": self.seed,
            "score": _round(self.score),
            "clip": _round(self.score),
            "clip_score": _round(clip_score_100(self.score), 4) if cosine and self.score is not None else None,
            "path": self.path,
        }
        if self.steps_done is not None:
            d["steps_done"] = self.steps_done
        if self.nsfw is not None:
            d["nsfw"] = self.nsfw
        return d


@dataclass
class RunRecord:
    """One run. ``scorer`` is None until the run was scored (a blocked prompt never is); ``extra`` holds the
    optional parts (``auto_prompt``, ``pruning``, ``search``, ``blocked_terms``, a stop's ``interrupted`` /
    ``stopped`` / ``steps_done``, ``inputs`` notes, the caller's ``extra_record``), written after the common keys."""

    run_id: str
    mode: str
    model: str
    preset: str
    sd_prompt: str
    clip_prompt: str
    negative_prompt: str
    settings: dict[str, Any]
    kind: str = "txt2img"
    created: str = field(default_factory=_now)
    ok: bool = False
    best: int | None = None  # index of the kept candidate
    candidates: list[Candidate] = field(default_factory=list)
    img_path: str | None = None
    scorer: str | None = None
    cosine: bool = False
    clip_prompt_truncated: bool = False
    score_min: float | None = None
    gate: dict[str, Any] | None = None
    reproduce: str | None = None
    reason: str | None = None
    timing_s: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    version: str = ""  # bestshot's version, set by generate()

    @classmethod
    def of(cls, cfg: ImgCfg, built: Any, run_id: str = "", mode: str = "user_prompt") -> RunRecord:
        """A new, unscored record of a run of ``cfg`` on ``built`` (a :class:`~bestshot.prompts.build.BuiltPrompt`)."""
        return cls(
            run_id=run_id,
            mode=mode,
            model=cfg.model,
            preset=cfg.preset,
            sd_prompt=built.sd_prompt,
            clip_prompt=built.clip_prompt,
            negative_prompt=built.negative_prompt,
            settings=settings_of(cfg),
        )

    @property
    def best_seed(self) -> int | None:
        return None if self.best is None else self.candidates[self.best].seed

    @property
    def best_score(self) -> float | None:
        return None if self.best is None else _round(self.candidates[self.best].score)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "run_id": self.run_id,
            "created": self.created,
            "ok": self.ok,
            "mode": self.mode,
            "model": self.model,
            "preset": self.preset,
            "sd_prompt": self.sd_prompt,
            "clip_prompt": self.clip_prompt,
            "negative_prompt": self.negative_prompt,
            "best_seed": self.best_seed,
            "best_score": self.best_score,
            "best_clip": self.best_score,
            "img_path": self.img_path,
            "candidates": [c.to_dict(self.cosine) for c in self.candidates],
            "settings": self.settings,
            "version": self.version,
        }
        if self.kind != "txt2img":
            d["kind"] = self.kind
        if self.scorer is not None:
            best = self.candidates[self.best].score if self.best is not None else None
            d.update(
                clip_prompt_truncated=self.clip_prompt_truncated,
                scorer=self.scorer,
                score_min=self.score_min,
                best_clip_score=_round(clip_score_100(best), 4) if self.cosine and best is not None else None,
                gate=self.gate,
                reproduce=self.reproduce,
            )
        if self.reason is not None:
            d["reason"] = self.reason
        d.update(self.extra)
        d["timing_s"] = self.timing_s
        return d


def settings_of(cfg: ImgCfg) -> dict[str, Any]:
    """The ``settings`` part of a record (the mode's own settings are added by the core when on)."""
    return {
        "n_images": cfg.n_images,
        "seed_base": cfg.seed_base,
        "steps": cfg.steps_base,
        "guidance": cfg.guidance,
        "width": cfg.width,
        "height": cfg.height,
        "score_min": cfg.score_min,
        "clip_min": cfg.score_min,
        "gate": cfg.gate,
        "scheduler": cfg.scheduler,
        "refiner": cfg.refiner,
        "refiner_model": cfg.refiner_model if cfg.refiner else None,
        "refiner_split": cfg.refiner_split if cfg.refiner else None,
        "dtype": cfg.dtype,
        "memory": cfg.memory,
        "style_suffix": cfg.style_suffix,
        "exact_best": cfg.exact_best,
        "vae_fp16": cfg.vae_fp16,
        "prune_start": cfg.prune_start,
        "prune_at": cfg.prune_at if cfg.prune_start else None,
        **(search_settings(cfg) if cfg.search else {}),
        **(
            {"repair": True, "repair_tries": cfg.repair_tries, "repair_rounds": cfg.repair_rounds} if cfg.repair else {}
        ),
        "loras": list(cfg.loras),
        "clip_skip": cfg.clip_skip,
        "prompt_weighting": cfg.prompt_weighting,
        **conditioning.settings(cfg),  # ControlNet, IP-Adapter, variation seed, VAE, safety checker
    }


def search_settings(cfg: ImgCfg) -> dict[str, Any]:
    """A search run's settings (what, with ``seed_base``, makes its pool and branches)."""
    return {
        "search": True,
        "search_pool": cfg.search_pool or 2 * cfg.n_images,
        "search_at": cfg.search_at,
        "search_branches": cfg.search_branches,
        "search_keep_noise": cfg.search_keep_noise,
    }


def png_metadata(record: dict[str, Any], seed: int, score: float | None) -> dict[str, Any]:
    """The ``bestshot`` PNG chunk of a saved candidate."""
    keep = ("run_id", "created", "mode", "kind", "model", "preset", "sd_prompt", "clip_prompt", "negative_prompt",
            "settings", "scorer", "version")  # fmt: skip
    meta = {k: record.get(k) for k in keep if k != "kind" or k in record}
    return {**meta, "seed": seed, "score": _round(score), "clip": _round(score)}
