"""`bestshot eval sweep`: a grid over any ``ImgCfg`` fields, each cell generated and measured against the manifest.

By default the grid is guidance × steps (``--guidance 3,7.5 --steps 15,30``, cells ``OUT/g{guidance}_s{steps}/``);
``--axis FIELD=V1,V2,...`` (repeatable) sweeps any other field instead, e.g. ``--axis scheduler=euler,dpmpp_2m,unipc
--axis steps=10,20,30`` (cells ``OUT/scheduler-euler_steps-10/``...), every value checked against the field's type
and rules before anything is generated, as AUTOMATIC1111's X/Y/Z plot does.

Each cell is an ``eval generate`` folder plus its ``metrics.json`` and a ``grid.png`` of its images; the
real images' features are computed once and cached (``cached_features``), so cells only pay for their
own images. Resuming is free: finished rows are never regenerated, and a cell whose images did not
change keeps its metrics. After the grid: ``results.csv``, ``results.md``, ``plot_*.png`` (every
metric against guidance and against steps, and seconds per image) and ``worst_clip.png``, the images
whose kept candidate has the lowest CLIP cosine with its caption, and ``xyz_grid*.png``: the first
manifest row's image at every sweep point, X/Y/Z-plot style (first axis across, second down, one file per
value of the others).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from itertools import product
from pathlib import Path
from typing import Any

from ..errors import BestshotError
from ..store import atomic_write_json, atomic_write_text
from .batch import BatchSettings, captions_for, generate_rows, read_outputs
from .manifest import read_manifest
from .plots import axis_plots, contact_sheet, metric_plots, xyz_grid

COLUMNS = (
    "guidance",
    "steps",
    "n_real",
    "n_fake",
    "fid",
    "kid_mean",
    "kid_std",
    "is_mean",
    "is_std",
    "cmmd",
    "clip_score",
    "clip_cosine",
    "sec_per_image",
    "generated_now",
    "folder",
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bestshot" / "eval_features"


def build_extractors(
    extractor: str = "clip",
    inception_weights: str | None = None,
    clip: str | None = None,
    device: str | None = None,
    resize: str = "clean",
):
    """(feature extractor for FID/KID/IS, CLIP extractor for CMMD/CLIP score or None).

    ``clip`` uses a CLIP image tower for everything (offline; NOT comparable with published FID).
    ``inception`` uses the FID Inception from ``inception_weights``, plus CLIP for CMMD / CLIP score when
    one is available (``clip`` folder or the embedded one). ``resize``: ``clean`` (clean-fid's PIL bicubic
    with antialias, the default) or ``legacy`` (see ``features``).
    """
    from .features import ClipExtractor, InceptionExtractor

    if extractor == "clip":
        return ClipExtractor(clip, device=device, resize=resize), None
    if extractor != "inception":
        raise BestshotError(f"unknown extractor {extractor!r} — use clip or inception")
    inc = InceptionExtractor(inception_weights, device=device, resize=resize)
    try:
        return inc, ClipExtractor(clip, device=device, resize=resize)
    except BestshotError:
        if clip is not None:
            raise
        return inc, None  # no embedded CLIP: CMMD / CLIP score are reported as not computed


def build_ray_extractors(
    extractor: str = "clip",
    inception_weights: str | None = None,
    clip: str | None = None,
    device: str | None = None,
    resize: str = "clean",
    *,
    workers: int | None = None,
    num_gpus: float = 0.0,
    num_cpus: float = 1.0,
):
    """``build_extractors`` whose work runs on Ray Data workers (``eval metrics --ray``; Ray must be running).

    Each worker builds the same extractor ``build_extractors`` would (from a factory: the driver loads no
    model), so the features, and the statistics the driver computes from them, are the single-process ones.
    With ``clip`` the one extractor serves FID/KID and CMMD / CLIP score, as in the single-process path.
    """
    from functools import partial

    from ..scale.features import RayFeatureExtractor
    from .features import ClipExtractor, InceptionExtractor, _check_resize

    _check_resize(resize)
    clip = str(Path(clip).expanduser().resolve()) if clip and Path(clip).expanduser().exists() else clip
    opts = dict(workers=workers, num_gpus=num_gpus, num_cpus=num_cpus)
    clip_factory = partial(ClipExtractor, clip, device=device, resize=resize)
    if extractor == "clip":
        ext = RayFeatureExtractor(clip_factory, **opts)
        return ext, ext
    if extractor != "inception":
        raise BestshotError(f"unknown extractor {extractor!r} — use clip or inception")
    weights = str(Path(inception_weights).expanduser().resolve()) if inception_weights else None
    inc = RayFeatureExtractor(partial(InceptionExtractor, weights, device=device, resize=resize), **opts)
    try:
        return inc, RayFeatureExtractor(clip_factory, **opts)
    except BestshotError:
        if clip is not None:
            raise
        return inc, None


def evaluate_folder(
    real: str | Path | Sequence[Path],
    fake: str | Path | Sequence[Path],
    extractor,
    clip=None,
    captions_manifest: str | Path | None = None,
    cache_dir: str | Path | None = None,
    real_key: str | None = None,
    real_stats: str | Path | None = None,
    save_real_stats: str | Path | None = None,
) -> dict[str, Any]:
    """``evaluate_sets`` for generated images (a folder, a manifest or a list of paths) with their
    captions — from ``captions_manifest`` by row id, else the manifest's own, else the JSON beside each
    image — so CLIP score can be computed."""
    from .metrics import evaluate_sets, load_image_set

    images, own = load_image_set(fake)
    captions = own if own is not None and captions_manifest is None else captions_for(images, captions_manifest)
    res = evaluate_sets(
        real,
        images,
        extractor,
        clip=clip,
        captions=captions,
        cache_dir=cache_dir,
        real_key=real_key,
        real_stats=real_stats,
        save_real_stats=save_real_stats,
    )
    res.update(
        real=str(real)
        if isinstance(real, (str, Path))
        else (f"FID statistics {real_stats}" if real is None else f"{len(real)} images"),
        fake=str(fake) if isinstance(fake, (str, Path)) else f"{len(images)} images",
    )
    return res


# sweep axis → the BatchSettings attribute it sets; any other ImgCfg field goes to BatchSettings.overrides
_SETTINGS = {
    "steps": "steps",
    "steps_base": "steps",
    "guidance": "guidance",
    "seed": "seed",
    "seed_base": "seed",
    "best_of": "best_of",
    "n_images": "best_of",
    "width": "width",
    "height": "height",
    "scheduler": "scheduler",
    "sampler": "scheduler",
    "model": "model",
    "scorer": "scorer",
    "device": "device",
    "dtype": "dtype",
    "exact_best": "exact_best",
}
# the ImgCfg field behind each alias (for its type and rules)
_FIELD = {"steps": "steps_base", "seed": "seed_base", "best_of": "n_images", "sampler": "scheduler"}
# fields that change nothing in an eval generate folder (outputs, logs, the gate the sweep switches off)
_NOT_SWEPT = {
    "preset",
    "out_dir",
    "log_jsonl",
    "save_candidates",
    "blocklist",
    "clip_min",
    "score_min",
    "gate",
    "style_suffix",
    "negative_prompt",
}


@dataclass(frozen=True)
class Axis:
    name: str  # as given (a field of ImgCfg or an alias: steps, seed, best_of, sampler)
    values: tuple[Any, ...]

    @property
    def field(self) -> str:
        return _FIELD.get(self.name, self.name)


def _sweepable() -> list[str]:
    from ..config import ImgCfg

    names = {f.name for f in fields(ImgCfg)} - _NOT_SWEPT
    return sorted(names | set(_FIELD))


def _parse_value(name: str, type_text: str, raw: str) -> Any:
    t = type_text.replace(" ", "")
    optional = t.endswith("|None") or t.startswith("None|")
    base = t.replace("|None", "").replace("None|", "")
    v = raw.strip()
    if optional and v.lower() in ("none", "null", "default"):
        return None
    try:
        if base == "int":
            return int(v)
        if base == "float":
            return float(v)
        if base == "bool":
            if v.lower() in ("1", "true", "yes", "on"):
                return True
            if v.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(v)
        if base == "str":
            if not v:
                raise ValueError(v)
            return v
    except ValueError:
        kind = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a non-empty word"}[base]
        raise BestshotError(f"--axis {name}: {raw!r} is not {kind}" + (" (or none)" if optional else "")) from None
    raise BestshotError(f"--axis {name}: a {type_text} field cannot be swept — sweep one of: {', '.join(_sweepable())}")


def parse_axis(text: str) -> Axis:
    """``"FIELD=V1,V2,..."`` → an :class:`Axis` whose values are parsed to the ImgCfg field's type and checked by
    its rules (an unknown field or a bad value is a BestshotError naming the choices)."""
    from ..config import ImgCfg

    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise BestshotError(f"--axis {text!r} must look like FIELD=V1,V2 — e.g. --axis scheduler=euler,unipc")
    types = {f.name: f.type for f in fields(ImgCfg)}
    fname = _FIELD.get(name, name)
    if fname not in types or name in _NOT_SWEPT:
        raise BestshotError(f"--axis: unknown or unsweepable field {name!r} — sweep one of: {', '.join(_sweepable())}")
    raw = [v for v in rest.split(",") if v.strip()]
    if not raw:
        raise BestshotError(f"--axis {name} has no values — e.g. --axis {name}=A,B")
    values = tuple(_parse_value(name, str(types[fname]), v) for v in raw)
    if len(set(values)) != len(values):
        raise BestshotError(f"--axis {name} repeats a value ({', '.join(raw)}) — give each value once")
    if fname == "scheduler":
        from ..schedulers import scheduler_name

        values = tuple(None if v is None else scheduler_name(v) for v in values)  # unknown names listed
    base = ImgCfg()
    for v in values:
        try:
            replace(base, **{fname: v}).validate()
        except BestshotError as e:
            raise BestshotError(f"--axis {name}={v!r}: {e}") from None
    return Axis(name, values)


def _value_label(v: Any) -> str:
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return "".join(c if c.isalnum() or c in ".+-" else "-" for c in text)


def point_name(axes: Sequence[Axis], point: Sequence[Any]) -> str:
    """The folder of one sweep point: ``g7.5_s30`` for guidance × steps, else ``scheduler-euler_steps-10``."""
    if [a.name for a in axes] == ["guidance", "steps"]:
        return cell_name(*point)
    return "_".join(f"{a.name}-{_value_label(v)}" for a, v in zip(axes, point))


@dataclass
class SweepConfig:
    manifest: str
    out: str
    guidance: tuple[float, ...] = (3.0, 5.0, 7.5, 12.0)
    steps: tuple[int, ...] = (15, 30, 60)
    num: int = 64
    model: str = "embedded"
    best_of: int = 1
    seed: int = 42
    width: int | None = None
    height: int | None = None
    scorer: str | None = None
    device: str | None = None
    extractor: str = "clip"
    resize: str = "clean"  # clean (clean-fid) | legacy
    inception_weights: str | None = None
    clip: str | None = None
    cache_dir: str | None = None  # default: OUT/feature_cache
    worst: int = 16
    extra: dict[str, Any] = field(default_factory=dict)
    axes: tuple[Axis, ...] = ()  # empty: guidance × steps from the two fields above

    def sweep_axes(self) -> tuple[Axis, ...]:
        axes = self.axes or (Axis("guidance", tuple(self.guidance)), Axis("steps", tuple(self.steps)))
        seen: dict[str, str] = {}
        for a in axes:
            key = _SETTINGS.get(a.name, a.field)
            if key in seen:
                raise BestshotError(f"--axis {a.name} and {seen[key]} set the same field — sweep it once")
            seen[key] = a.name
        return tuple(axes)


def cell_name(guidance: float, steps: int) -> str:
    return f"g{guidance:g}_s{steps}"


def run_sweep(cfg: SweepConfig, progress: bool = True, log=print) -> dict[str, Any]:
    """Run (or resume) the grid; write the tables, plots and contact sheet; return the rows."""
    if not cfg.axes and (not cfg.guidance or not cfg.steps):
        raise BestshotError(
            "the sweep needs at least one guidance and one steps value, e.g. --guidance 3,7.5 --steps 15,30"
        )
    axes = cfg.sweep_axes()
    if cfg.num < 2:
        raise BestshotError(f"--num must be >= 2 for FID/KID (got {cfg.num})")
    out = Path(cfg.out)
    rows = read_manifest(cfg.manifest)[: cfg.num]
    if len(rows) < 2:
        raise BestshotError(f"{cfg.manifest} has {len(rows)} usable row(s) — FID/KID need at least 2")
    real = [r.image_path for r in rows]
    real_key = f"{Path(cfg.manifest).stem}-first{len(rows)}"
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "feature_cache"
    extractor, clip = build_extractors(cfg.extractor, cfg.inception_weights, cfg.clip, cfg.device, cfg.resize)

    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    for point in product(*(a.values for a in axes)):
        folder = out / point_name(axes, point)
        settings = BatchSettings(
            model=cfg.model,
            seed=cfg.seed,
            best_of=cfg.best_of,
            width=cfg.width,
            height=cfg.height,
            scorer=cfg.scorer,
            device=cfg.device,
        )
        for a, v in zip(axes, point):
            if a.name in _SETTINGS:
                setattr(settings, _SETTINGS[a.name], v)
            else:
                settings.overrides[a.field] = v
        summary = generate_rows(cfg.manifest, folder, settings, num=cfg.num, progress=progress)
        metrics_path = folder / "metrics.json"
        wanted = {r.row_id for r in rows}  # the folder may hold more rows from a larger earlier run
        outputs = [o for o in read_outputs(folder) if o.get("row_id") in wanted]
        if len(outputs) < 2:
            raise BestshotError(f"{folder} has {len(outputs)} finished image(s) — FID/KID need at least 2")
        metrics = _reuse(metrics_path, summary, len(outputs), extractor.name, extractor.resize)
        if metrics is None:
            metrics = evaluate_folder(
                real, [Path(o["path"]) for o in outputs], extractor, clip, cache_dir=cache_dir, real_key=real_key
            )
            metrics["fake"] = str(folder)
            atomic_write_json(metrics_path, metrics)
        secs = [o["seconds"] for o in outputs if isinstance(o.get("seconds"), (int, float))]
        used = summary["settings"]
        results.append(
            {
                "guidance": used["guidance"],
                "steps": used["steps"],
                **{a.name: v for a, v in zip(axes, point)},
                **{k: metrics.get(k) for k in COLUMNS if k in metrics},
                "sec_per_image": round(sum(secs) / len(secs), 4) if secs else None,
                "generated_now": summary["generated"],
                "folder": folder.name,
                "_meta": metrics,
                "_outputs": outputs,
            }
        )
        log(
            f"cell {folder.name}: {summary['generated']} generated, {summary['skipped']} already done; "
            f"FID {_fmt(metrics.get('fid'))}, CLIP score {_fmt(metrics.get('clip_score'))}"
        )
    info = {
        "extractor": extractor.name,
        "resize": extractor.resize,
        "n_real": len(real),
        "clip_extractor": results[0]["_meta"].get("clip_extractor"),
        "model": cfg.model,
        "best_of": cfg.best_of,
        "seed": cfg.seed,
        "manifest": str(cfg.manifest),
        "seconds": round(time.perf_counter() - t0, 2),
        "axes": [a.name for a in axes],
    }
    files = write_reports(results, out, info, cfg.worst)
    return {
        "info": info,
        "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
        "files": [str(f) for f in files],
    }


def _reuse(
    path: Path, summary: dict[str, Any], n_outputs: int, extractor_name: str, resize: str | None = None
) -> dict[str, Any] | None:
    """The cell's saved metrics when nothing was generated since and they cover the same images."""
    if summary["generated"] or not path.is_file():
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    same = m.get("n_fake") == n_outputs and m.get("extractor") == extractor_name
    return m if same and (resize is None or m.get("resize") == resize) else None


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def _columns(info: dict[str, Any]) -> list[str]:
    axes = info.get("axes") or ["guidance", "steps"]
    return list(axes) + [c for c in COLUMNS if c not in axes]


def to_markdown(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    axes = info.get("axes") or ["guidance", "steps"]
    lines = [
        f"# Sweep: {' × '.join(axes)} — model `{info['model']}`, best-of {info['best_of']}",
        "",
        f"- feature extractor (FID/KID): {info['extractor']}",
        f"- resize: {info['resize']}",
        f"- CLIP for CMMD / CLIP score: {info.get('clip_extractor') or '—'}",
        f"- samples: {info['n_real']} real images ({info['manifest']}), generated per cell: see n_fake",
        "- FID with fewer samples than feature dimensions is biased upwards: compare cells, not papers",
        "",
        "| " + " | ".join(axes) + " | n_fake | FID | KID | CMMD | CLIP score | CLIP cos | IS | s/image |",
        "|" + "---:|" * (len(axes) + 8),
    ]
    for r in results:
        kid = f"{_fmt(r.get('kid_mean'))} ± {_fmt(r.get('kid_std'))}" if r.get("kid_mean") is not None else "—"
        point = " | ".join(_fmt_axis(r.get(a)) for a in axes)
        lines.append(
            f"| {point} | {r.get('n_fake')} | {_fmt(r.get('fid'), 3)} | {kid} | "
            f"{_fmt(r.get('cmmd'))} | {_fmt(r.get('clip_score'), 3)} | {_fmt(r.get('clip_cosine'))} | "
            f"{_fmt(r.get('is_mean'), 3)} | {_fmt(r.get('sec_per_image'), 3)} |"
        )
    return "\n".join(lines) + "\n"


def _fmt_axis(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else ("—" if v is None else str(v))


def write_reports(results: list[dict[str, Any]], out: Path, info: dict[str, Any], worst: int = 16) -> list[Path]:
    cols = _columns(info)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols + ["extractor", "resize"], lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in results:
        w.writerow({**{k: r.get(k) for k in cols}, "extractor": info["extractor"], "resize": info["resize"]})
    files = [
        atomic_write_text(out / "results.csv", buf.getvalue()),
        atomic_write_text(out / "results.md", to_markdown(results, info)),
        atomic_write_json(
            out / "results.json",
            {"info": info, "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]},
        ),
    ]
    subtitle = f"{info['extractor'].split(' ')[0]}, n_real={info['n_real']}"
    axes = info.get("axes") or ["guidance", "steps"]
    if axes == ["guidance", "steps"]:
        files += metric_plots(results, out, subtitle=subtitle)
    else:
        files += axis_plots(results, axes, out, subtitle=subtitle)
    for r in results:  # a contact sheet of every sweep point's images
        items = [
            {
                "path": o["path"],
                "caption": o.get("caption", ""),
                "label": f"#{o.get('row_id')} cos {o['clip']:.3f}"
                if o.get("clip") is not None
                else f"#{o.get('row_id')}",
            }
            for o in r["_outputs"]
        ]
        if items:
            files.append(
                contact_sheet(
                    items,
                    out / r["folder"] / "grid.png",
                    thumb=128,
                    title=", ".join(f"{a}={_fmt_axis(r.get(a))}" for a in axes),
                )
            )
    files += xyz_grid(results, axes, out)
    cases = [{**o, "cell": r["folder"]} for r in results for o in r["_outputs"] if o.get("clip") is not None]
    cases.sort(key=lambda o: o["clip"])
    if cases:
        items = [
            {"path": o["path"], "caption": o["caption"], "label": f"{o['cell']} #{o['row_id']} cos {o['clip']:.3f}"}
            for o in cases[:worst]
        ]
        files.append(
            contact_sheet(
                items,
                out / "worst_clip.png",
                title=f"lowest CLIP cosine (scorer {cases[0].get('scorer')}) of {len(cases)} images",
            )
        )
    return files
