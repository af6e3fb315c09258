"""``ServerSettings``: everything ``bestshot serve`` decides (the HTTP client decides only per-request values)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import EMBEDDED
from .a1111 import Limits


@dataclass
class ServerSettings:
    """Everything ``bestshot serve`` decides; the HTTP client decides only per-request values."""

    model: str = EMBEDDED
    scorer: Any = None  # a spec string (folder, hub id, "embedded") or a Scorer object; None: the model's default
    out_dir: str = "images_out"
    log_jsonl: str | None = None  # default: images_log.jsonl beside out_dir (where `bestshot generate` logs)
    curate_dir: str = "outputs"
    curate_config: str | None = None  # bestshot.curate's config.yaml; its outputs folder replaces curate_dir
    interrogate_cache: str | None = None  # text-embedding cache of the interrogator (None: ~/.cache/bestshot)
    max_queue: int = 8
    token: str | None = None
    api_auth: str | None = None  # A1111 style "user:pass[,user2:pass2]"
    device: str | None = None
    dtype: str = "auto"
    memory: str = "gpu"
    max_batch: int | None = None
    save_candidates: bool = False
    extra_models: tuple[str, ...] = ()  # other models clients may switch to (POST /sdapi/v1/options)
    limits: Limits = field(default_factory=Limits)
    best_of: int = 1  # default candidates per image on the A1111 routes (`serve --best-of`)
    host: str = "127.0.0.1"  # the interface served (its name is accepted in the Host header)
    allowed_hosts: tuple[str, ...] | None = None  # Host header names accepted; None: localhost names + host
    cors_allow_origins: str | None = None  # A1111's --cors-allow-origins (comma-separated); see server/cors.py
    cors_allow_origins_regex: str | None = None  # both None: loopback origins only
    # ControlNet / VAE folders (None: models/ControlNet, models/VAE beside out_dir) and the image safety check
    controlnet_dir: str | None = None
    vae_dir: str | None = None
    safety_checker: str | None = None  # a safety-checker folder or hub id; None: off


__all__ = ["ServerSettings"]
