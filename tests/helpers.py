"""Shared test helpers (plain functions; fixtures live in conftest.py)."""

import sys

import numpy as np
import torch

from bestshot import world as W
from bestshot.cli import main

# captions for the evaluation tests' small manifests
CAPTIONS = [
    "a red square on a white background",
    "a blue circle on a gray background",
    "a green triangle above a yellow star",
    "a small purple cross on a black background",
    "two orange circles next to each other",
]


def run_cli(argv, capsys, monkeypatch):
    """Run ``bestshot ARGV`` in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["bestshot", *argv])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    cap = capsys.readouterr()
    return code, cap.out, cap.err


class ColourCLIP:
    """A stand-in scorer whose embeddings are exact colour features: texts by the colour words they name,
    images by the world colours they show. Enough to tell which region holds which object."""

    name = "colour"

    def _vec(self, weights):
        v = torch.zeros(len(W.COLOURS) + 1)
        v[-1] = 0.05
        for i, w in weights.items():
            v[i] += w
        return torch.nn.functional.normalize(v, dim=0)

    def embed_texts(self, texts):
        names = list(W.COLOURS)
        return torch.stack([self._vec({names.index(w): 1.0 for w in t.split() if w in W.COLOURS}) for t in texts])

    def embed_images(self, images):
        out = []
        for im in images:
            arr = np.asarray(im, np.float32).reshape(-1, 3)
            d = np.stack([np.linalg.norm(arr - np.asarray(c, np.float32), axis=-1) for c in W.COLOURS.values()])
            counts = np.bincount(d.argmin(0)[d.min(0) < 30], minlength=len(W.COLOURS))
            out.append(self._vec({i: float(c) for i, c in enumerate(counts) if c}))
        return torch.stack(out)

    def score(self, images, text):
        texts = [text] * len(images) if isinstance(text, str) else list(text)
        return (self.embed_images(images) * self.embed_texts(texts)).sum(-1).tolist()
