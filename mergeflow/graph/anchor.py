"""``anchor: auto``: the model closest to the plain average of all models.

Closeness is the sum over tensors of the (unsquared) Frobenius norm of the difference, as in the
rotation-symmetry paper. One streaming pass: one tensor of every model in memory at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from mergeflow.io.dtypes import is_float
from mergeflow.io.reader import ModelReader


def auto_anchor(
    readers: Mapping[str, ModelReader], ref: str, progress: Callable[[int], None] | None = None
) -> tuple[str, dict[str, float]]:
    names = list(readers)
    dist = dict.fromkeys(names, 0.0)
    for tensor, info in readers[ref].tensors.items():
        if not is_float(info.dtype):
            continue
        xs = [readers[m].read(tensor, dtype=torch.float32) for m in names]
        avg = sum(xs[1:], xs[0].clone()) / len(xs)
        for m, x in zip(names, xs, strict=True):
            dist[m] += float(torch.linalg.vector_norm(x - avg))
        if progress is not None:
            progress(info.nbytes * len(names))
    return min(names, key=lambda m: dist[m]), dist
