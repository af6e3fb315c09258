"""Sweep figures: each metric against guidance and against steps, and a contact sheet of worst cases.

matplotlib with the Agg backend (no display needed); every PNG is rendered to memory and written
atomically, like every other output.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..store import atomic_write_bytes

# metric key → axis label (lower is better for distances, higher for scores)
METRICS: dict[str, str] = {
    "fid": "FID (lower is better)",
    "kid_mean": "KID (lower is better)",
    "cmmd": "CMMD (lower is better)",
    "clip_score": "CLIP score 100·max(cos,0) (higher is better)",
    "clip_cosine": "CLIP cosine (higher is better)",
    "is_mean": "Inception Score (higher is better)",
    "sec_per_image": "seconds per image",
}


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def metric_plots(rows: Sequence[dict[str, Any]], out_dir: str | Path, subtitle: str = "") -> list[Path]:
    """One PNG per metric present in ``rows`` (dicts with guidance, steps and metric values):
    left panel metric vs guidance (one line per steps value), right panel vs steps (one per guidance)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    guid = sorted({float(r["guidance"]) for r in rows})
    steps = sorted({int(r["steps"]) for r in rows})
    at = {(float(r["guidance"]), int(r["steps"])): r for r in rows}
    written = []
    for key, label in METRICS.items():
        if not any(r.get(key) is not None for r in rows):
            continue
        fig, (ax_g, ax_s) = plt.subplots(1, 2, figsize=(10, 3.8))
        for s in steps:
            pts = [(g, at[(g, s)][key]) for g in guid if (g, s) in at and at[(g, s)].get(key) is not None]
            if pts:
                ax_g.plot(*zip(*pts), marker="o", label=f"{s} steps")
        for g in guid:
            pts = [(s, at[(g, s)][key]) for s in steps if (g, s) in at and at[(g, s)].get(key) is not None]
            if pts:
                ax_s.plot(*zip(*pts), marker="o", label=f"guidance {g:g}")
        for ax, xl in ((ax_g, "guidance scale"), (ax_s, "steps")):
            ax.set_xlabel(xl)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{label}{' — ' + subtitle if subtitle else ''}", fontsize=9)
        written.append(_save(fig, out / f"plot_{key}.png"))
        plt.close(fig)
    return written


def contact_sheet(
    items: Sequence[dict[str, Any]], out_path: str | Path, cols: int = 4, thumb: int = 160, title: str = ""
) -> Path:
    """A grid of images (``path``), each with ``label`` (one line) and ``caption`` (wrapped) under it.

    Small images are enlarged with nearest-neighbour so their pixels stay visible.
    """
    font = ImageFont.load_default()
    line_h = 12
    wrap = max(10, thumb // 6)
    texts = [[str(it.get("label", ""))] + textwrap.wrap(str(it.get("caption", "")), wrap)[:4] for it in items]
    text_h = line_h * max((len(t) for t in texts), default=1) + 6
    cols = max(1, min(cols, len(items) or 1))
    n_rows = max(1, -(-len(items) // cols))
    head = 20 if title else 0
    pad = 6
    sheet = Image.new("RGB", (cols * (thumb + pad) + pad, head + n_rows * (thumb + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 4), title, fill="black", font=font)
    for k, (it, lines) in enumerate(zip(items, texts)):
        x = pad + (k % cols) * (thumb + pad)
        y = head + pad + (k // cols) * (thumb + text_h + pad)
        with Image.open(it["path"]) as im:
            im = im.convert("RGB")
            scale = thumb / max(im.size)
            if scale != 1:
                im = im.resize(
                    (max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                    Image.NEAREST if scale > 1 else Image.BICUBIC,
                )
            sheet.paste(im, (x, y))
        for j, line in enumerate(lines):
            draw.text((x, y + thumb + 3 + j * line_h), line, fill="red" if j == 0 else "black", font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return atomic_write_bytes(out_path, buf.getvalue())


def _label(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def axis_plots(
    rows: Sequence[dict[str, Any]], axes: Sequence[str], out_dir: str | Path, subtitle: str = ""
) -> list[Path]:
    """One PNG per metric present in ``rows``: the metric against the first axis (numbers on a number line,
    names such as schedulers side by side), one line per combination of the other axes' values."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    xs = list(dict.fromkeys(r[axes[0]] for r in rows))
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    pos = {x: (x if numeric else k) for k, x in enumerate(xs)}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[a] for a in axes[1:]), []).append(r)
    written = []
    for key, label in METRICS.items():
        if not any(r.get(key) is not None for r in rows):
            continue
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for g, rs in groups.items():
            pts = sorted((pos[r[axes[0]]], r[key]) for r in rs if r.get(key) is not None)
            if pts:
                name = ", ".join(f"{a}={_label(v)}" for a, v in zip(axes[1:], g)) or None
                ax.plot(*zip(*pts), marker="o", label=name)
        if not numeric:
            ax.set_xticks(range(len(xs)), [_label(x) for x in xs])
        ax.set_xlabel(axes[0])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(axes) > 1:
            ax.legend(fontsize=8)
        fig.suptitle(f"{label}{' — ' + subtitle if subtitle else ''}", fontsize=9)
        written.append(_save(fig, out / f"plot_{key}.png"))
        plt.close(fig)
    return written


def xyz_grid(rows: Sequence[dict[str, Any]], axes: Sequence[str], out_dir: str | Path, thumb: int = 128) -> list[Path]:
    """AUTOMATIC1111-style X/Y/Z plot: the first manifest row's image at every sweep point, the first axis
    across, the second down (labelled), one PNG per combination of the remaining axes (``xyz_grid.png``
    when there are at most two axes, else ``xyz_grid_<values>.png``). Rows are dicts with the axis values
    and ``_outputs`` (the point's finished images, with ``row_id`` and ``path``)."""
    out = Path(out_dir)
    common = None
    for r in rows:
        ids = {o.get("row_id") for o in r["_outputs"]}
        common = ids if common is None else common & ids
    if not common:
        return []
    first = min(common)
    xs = list(dict.fromkeys(r[axes[0]] for r in rows))
    ys = list(dict.fromkeys(r[axes[1]] for r in rows)) if len(axes) > 1 else [None]
    zs: dict[tuple, dict[tuple, str]] = {}
    for r in rows:
        z = tuple(r[a] for a in axes[2:])
        path = next(o["path"] for o in r["_outputs"] if o.get("row_id") == first)
        zs.setdefault(z, {})[(r[axes[0]], r[axes[1]] if len(axes) > 1 else None)] = path
    font = ImageFont.load_default()
    left = 10 + 7 * max((len(f"{axes[1]}={_label(y)}") for y in ys if y is not None), default=0) if len(axes) > 1 else 6
    top, pad = 36, 4
    written = []
    for z, cells in zs.items():
        sheet = Image.new("RGB", (left + len(xs) * (thumb + pad) + pad, top + len(ys) * (thumb + pad) + pad), "white")
        draw = ImageDraw.Draw(sheet)
        title = ", ".join(f"{a}={_label(v)}" for a, v in zip(axes[2:], z))
        draw.text((pad, 2), (title + " — " if title else "") + f"manifest row {first}", fill="black", font=font)
        for i, x in enumerate(xs):
            draw.text((left + i * (thumb + pad) + 2, 18), f"{axes[0]}={_label(x)}", fill="black", font=font)
        for j, y in enumerate(ys):
            if y is not None:
                draw.text((4, top + j * (thumb + pad) + thumb // 2), f"{axes[1]}={_label(y)}", fill="black", font=font)
            for i, x in enumerate(xs):
                if (x, y) not in cells:
                    continue
                with Image.open(cells[(x, y)]) as im:
                    im = im.convert("RGB")
                    scale = thumb / max(im.size)
                    im = im.resize(
                        (max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                        Image.NEAREST if scale > 1 else Image.BICUBIC,
                    )
                    sheet.paste(im, (left + i * (thumb + pad), top + j * (thumb + pad)))
        name = (
            "xyz_grid.png"
            if not z
            else "xyz_grid_"
            + "_".join(
                "".join(c if c.isalnum() or c in ".+-" else "-" for c in f"{a}-{_label(v)}")
                for a, v in zip(axes[2:], z)
            )
            + ".png"
        )
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        written.append(atomic_write_bytes(out / name, buf.getvalue()))
    return written
