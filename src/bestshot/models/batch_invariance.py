"""Batch-invariant matrix products: a row computed the same, to the last bit, alone or in a batch.

Best-of-N renders N candidates in one batch, and a user who reruns the kept seed alone expects the same
file. Float sums are not associative, so that holds only where every kernel computes a row the same way
whatever the batch size. On CPU (float32), measured on the embedded model's UNet and CLIP at batches of 1
to 16, the kernels that break it are the matrix products whose rows *are* the batch: the timestep and class
embedding MLPs, each ResNet's time projection and the CLIP projections of pooled embeddings. There
BLAS multiplies one row as a matrix-vector product and 16 rows as a blocked matrix product, and the two
round differently. Convolutions, attention and the projections of token sequences (rows = batch x tokens)
came out the same at every batch size tried.

``rowwise_linears`` recomputes those products on CPU as a multiply-and-sum (``(x[:, None] * W).sum(-1)``):
each output is then one reduction over the input features, summed in the same order whatever the number of
rows (1 to 16 checked, and each row against itself alone). That costs ~0.08 ms a layer at 16 rows against
0.3 ms for a loop of 1-row products: 1-2 % of a UNet step (bench/RESULTS.md).
:class:`~bestshot.models.world_pipeline.BestshotWorldPipeline` installs it and, on CPU, skips re-rendering
the kept image alone; ``tests/test_world_pipeline.py`` checks the claim on every run.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def _rowwise(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    x = args[0] if args else None
    if not torch.is_tensor(x) or x.dim() != 2 or x.device.type != "cpu":
        return None  # token sequences (3-D) are batch-invariant already; on a GPU this alone is not known to
        # suffice (not measured), so it is spared the cost there
    w = module.weight
    step = max(1, (1 << 22) // w.numel())  # rows per chunk: a (rows, out, in) product of at most 4M floats
    y = torch.cat([(x[i : i + step, None, :] * w).sum(-1) for i in range(0, x.shape[0], step)])
    return y if module.bias is None else y + module.bias


def rowwise_linears(*modules: nn.Module) -> list[RemovableHandle]:
    """Recompute every ``nn.Linear`` in ``modules`` that gets a (batch, features) input row by row.

    A forward hook, so weights, state dicts and ``save_pretrained`` are untouched; the handles remove it.
    A layer that has it already (two pipelines sharing a UNet) is left alone.
    """
    linears = {id(m): m for mod in modules for m in mod.modules() if type(m) is nn.Linear}.values()
    return [m.register_forward_hook(_rowwise) for m in linears if _rowwise not in m._forward_hooks.values()]
