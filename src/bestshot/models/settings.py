"""A generate call's settings, resolved against the model it names.

:mod:`bestshot.config` holds plain settings (``ImgCfg``, ``PRESETS``); this module adds what a model
says about them. Resolution order (later wins): ``ImgCfg`` defaults → preset → the model folder's
``bestshot_defaults.json`` (only with the ``embedded`` preset or a model that ships one and no explicit
preset) → explicit overrides.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ..config import EMBEDDED, ImgCfg, apply_model_defaults, merge, plain_preset
from ..errors import BestshotError
from ..yaml_io import read_yaml_mapping
from .registry import is_world_folder, model_defaults


def preset_config(name: str) -> ImgCfg:
    """The ``ImgCfg`` of a named preset (the ``embedded`` one with the shipped model's own defaults)."""
    cfg = plain_preset(name)
    if name == "embedded":
        cfg = apply_model_defaults(cfg, model_defaults(EMBEDDED))
    return cfg


def config_from_yaml(path: str | Path) -> ImgCfg:
    """An ``ImgCfg`` from a YAML file of settings (``--config``); a ``preset:`` key starts from that preset."""
    data = read_yaml_mapping(path, "check the path given to --config")
    base = preset_config(data.pop("preset")) if "preset" in data else ImgCfg()
    return ImgCfg.from_dict(merge(base, data)).validate()


def resolve_config(
    cfg: ImgCfg | None = None, preset: str | None = None, model: str | None = None, **overrides: Any
) -> ImgCfg:
    """Build the final, validated config of one generate call.

    ``cfg`` wins over ``preset``; with neither, the preset is ``embedded`` when no model, the embedded
    one or a folder of the same kind (``bestshot train export``) is named, else ``custom``. ``model`` and
    non-None ``overrides`` are applied last.
    """
    if cfg is None:
        if preset is None:
            preset = "embedded" if model in (None, EMBEDDED) or is_world_folder(model) else "custom"
        cfg = preset_config(preset)
        if model is not None and model != cfg.model and preset in ("custom", "embedded"):
            cfg = replace(cfg, model=model)
            cfg = apply_model_defaults(cfg, model_defaults(model))
    if model is not None:
        cfg = replace(cfg, model=model)
    known = {f.name for f in fields(ImgCfg)} | {"clip_min"}  # clip_min: the old name of score_min
    bad = sorted(k for k in overrides if k not in known)
    if bad:
        raise BestshotError(f"unknown setting(s) {', '.join(bad)} — valid settings are: {', '.join(sorted(known))}")
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    return cfg.validate()
