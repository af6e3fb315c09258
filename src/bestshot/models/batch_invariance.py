"""Batch-invariant matrix products: a row computed the same, to the last bit, alone or in a batch.

Best-of-N renders N candidates in one batch, and a user who reruns the kept seed alone expects the same
file. Float sums are not associative, so that holds only where every kernel computes a row the same way
whatever the batch size. On CPU (float32), measured on the embedded model's UNet and CLIP at batches of 1
to 16, the kernels that break it are the matrix products whose rows *are* the batch: the timestep and class
embedding MLPs, each ResNet's time projection and the CLIP projections of pooled embeddings. There
BLAS multiplies one row as a matrix-vector product and 16 rows as a blocked matrix product, and the two
round differently. Convolutions, attention and the projections of token sequences (rows = batch x tokens)
came out the same at every batch size tried.

``rowwise_linears`` makes those products row by row: each row then goes through the same 1-row kernel at
any batch size. It costs one small matrix-vector product per row, a millisecond or so per UNet step at
batch 16. :class:`~bestshot.models.world_pipeline.BestshotWorldPipeline` installs it and, on CPU, skips
re-rendering the kept image alone; ``tests/test_world_pipeline.py`` checks the claim on every run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle


def _rowwise(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    x = args[0] if args else None
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[0] < 2:
        return None  # token sequences (3-D) and single rows are already batch-invariant
    return torch.cat([F.linear(x[i:i + 1], module.weight, module.bias) for i in range(x.shape[0])])


def rowwise_linears(*modules: nn.Module) -> list[RemovableHandle]:
    """Recompute every ``nn.Linear`` in ``modules`` that gets a (batch, features) input one row at a time.

    A forward hook, so weights, state dicts and ``save_pretrained`` are untouched; the handles remove it.
    A layer that has it already (two pipelines sharing a UNet) is left alone.
    """
    linears = {id(m): m for mod in modules for m in mod.modules() if type(m) is nn.Linear}.values()
    return [m.register_forward_hook(_rowwise) for m in linears if _rowwise not in m._forward_hooks.values()]
