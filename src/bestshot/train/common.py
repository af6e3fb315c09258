"""Small helpers shared by the trainers: YAML dataclass configs, atomic saves, lr schedule, EMA."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, TypeVar

import torch

from bestshot.errors import BestshotError
from bestshot.store import atomic_open, atomic_write_text  # noqa: F401  (re-exported for train/*)
from bestshot.yaml_io import dataclass_from_dict, read_yaml_mapping

T = TypeVar("T")


def load_config(cls: type[T], path: str | os.PathLike | None = None, **overrides: Any) -> T:
    """Dataclass ``cls`` from a YAML file plus keyword overrides; unknown keys are a BestshotError."""
    data = (
        read_yaml_mapping(path, "pass an existing YAML file to --config (see configs/embedded/*.yaml)") if path else {}
    )
    data.update({k: v for k, v in overrides.items() if v is not None})
    return dataclass_from_dict(cls, data, "training")


def check_clip_spec(path: str | os.PathLike) -> None:
    """Training loads a CLIP with transformers: an open_clip spec or a path that is not a folder is refused in
    one line (transformers took ``open_clip:...`` for a malformed hub id)."""
    spec = str(path)
    if spec.startswith("open_clip:"):
        raise BestshotError(
            f"--clip {spec}: training takes a CLIP folder in transformers' layout (config.json and "
            "weights); open_clip CLIPs are not supported here — pass such a folder, e.g. the "
            "embedded model's clip/ folder"
        )
    if not Path(spec).is_dir() and (":" in spec or spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise BestshotError(f"--clip {spec} is not a CLIP folder — pass a folder with config.json and weights")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temp file in the same folder, then os.replace: a kill never leaves half a file."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def lr_at(step: int, base: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Linear warmup then cosine decay to ``min_ratio * base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


class EMA:
    """Exponential moving average of parameters, with the usual warmup ``min(decay, (1+n)/(10+n))``
    so that a short CPU run is not dominated by the random initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, sd: dict) -> None:
        """Load a saved average onto the device of the current one (a checkpoint is loaded on CPU)."""
        device = next(iter(self.shadow.values())).device if self.shadow else None
        self.decay, self.num_updates = sd["decay"], sd["num_updates"]
        self.shadow = {k: v.to(device) if device is not None else v for k, v in sd["shadow"].items()}

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})


def plot_losses(losses: list[tuple[int, float]], path: str | os.PathLike, title: str) -> None:
    """Loss curve (raw + running mean) as a PNG, written atomically."""
    if not losses:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s, _ in losses]
    vals = [v for _, v in losses]
    k = max(1, len(vals) // 50)
    smooth = [sum(vals[max(0, i - k + 1) : i + 1]) / len(vals[max(0, i - k + 1) : i + 1]) for i in range(len(vals))]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, vals, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def plot_similarity(sim, row_labels: list[str], col_labels: list[str], path: str | os.PathLike, title: str) -> None:
    """A text↔image similarity matrix (rows: texts, columns: images) as an annotated heatmap PNG, written
    atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sim = np.asarray(sim, dtype=float)
    if sim.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"similarity matrix {sim.shape} does not match {len(row_labels)} rows x {len(col_labels)} columns"
        )
    r, c = sim.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.6 * c, 24), min(1.5 + 0.45 * r, 18)), dpi=100)
    im = ax.imshow(sim, cmap="viridis", aspect="auto")
    ax.set_xticks(range(c), col_labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(r), [s if len(s) <= 40 else s[:37] + "..." for s in row_labels], fontsize=7)
    if r * c <= 400:
        for i in range(r):
            for j in range(c):
                ax.text(
                    j,
                    i,
                    f"{sim[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if sim[i, j] < sim.mean() else "black",
                )
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
