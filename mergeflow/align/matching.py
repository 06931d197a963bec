"""What activation matching is asked for and what it finds: plain data, shared by the steps that use it,
the task graph and the collector (``mergeflow.learn.activations``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mergeflow.align.stream_map import ResidualMap


@dataclass(frozen=True)
class Want:
    """What to match, and on how much data."""

    ffn: bool
    heads: bool
    stream: str | None  # the stream map's group (permutation, orthogonal, orthogonal_centred) or None
    batches: int
    batch_size: int
    max_length: int | None


@dataclass
class Found:
    stream: ResidualMap | None
    layers: dict[int, dict[str, torch.Tensor]]  # layer index -> {"ffn": perm, "heads": perm}
