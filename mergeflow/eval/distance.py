"""Squared L2 distance between two models, in total and per module type, streaming tensor by tensor.

Modules: qk (query/key weights and biases), vo (value/output), ffn (FFN weights and biases; for
these three, fused tensors such as GPT-2's c_attn are split first), norms, embeddings, other (heads,
poolers, output biases). Each is reported absolute and relative to ||A||^2 over the same tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mergeflow.align.layer import MODULES
from mergeflow.arch.canonical import to_canonical
from mergeflow.arch.spec import arch_spec
from mergeflow.errors import MissingTensor, ShapeMismatch, UnsupportedArchitecture
from mergeflow.io.dtypes import is_float
from mergeflow.io.reader import ModelReader

NORM = re.compile(r"norm|(^|\.)ln_|layernorm", re.IGNORECASE)
EMBED = re.compile(r"embed|wte|wpe|patch|position|token_type|cls_token|mask_token")
ROLE_MODULE = {r: m for m, roles in MODULES.items() for r in roles}


@dataclass
class Distance:
    by_module: dict[str, float] = field(default_factory=dict)  # squared distance
    norm_a: dict[str, float] = field(default_factory=dict)  # ||A||^2 over the same tensors

    def add(self, module: str, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.to(torch.float64), b.to(torch.float64)
        self.by_module[module] = self.by_module.get(module, 0.0) + float(((a - b) ** 2).sum())
        self.norm_a[module] = self.norm_a.get(module, 0.0) + float((a * a).sum())

    @property
    def total(self) -> float:
        return sum(self.by_module.values())

    def rows(self) -> list[tuple[str, float, float]]:
        """(module, squared distance, relative to ||A||^2), modules in a fixed order, then the total."""
        order = [m for m in ("qk", "vo", "ffn", "norms", "embeddings", "other") if m in self.by_module]
        out = [
            (m, self.by_module[m], self.by_module[m] / self.norm_a[m] if self.norm_a[m] else 0.0)
            for m in order
        ]
        na = sum(self.norm_a.values())
        return [*out, ("total", self.total, self.total / na if na else 0.0)]


def model_distance(a: ModelReader, b: ModelReader, progress: Callable[[int], None] | None = None) -> Distance:
    for name, info in a.tensors.items():
        other = b.tensors.get(name)
        if other is None:
            raise MissingTensor(f"model '{b.name}' lacks tensor {name!r}")
        if other.shape != info.shape:
            raise ShapeMismatch(
                f"tensor {name!r}: shape {list(other.shape)} in '{b.name}', {list(info.shape)} in '{a.name}'"
            )
    if set(b.tensors) - set(a.tensors):
        raise MissingTensor(f"model '{b.name}' has tensors that '{a.name}' lacks")
    dist = Distance()
    done: set[str] = set()
    try:
        spec = arch_spec(a.config, a.tensors, {n: t.shape for n, t in a.tensors.items()})
    except UnsupportedArchitecture:
        spec = None
    if spec is not None:
        for layer in spec.layers:
            names = layer.tensors()
            ca = to_canonical(spec, layer, {n: a.read(n) for n in names})
            cb = to_canonical(spec, layer, {n: b.read(n) for n in names})
            for role in ca:
                dist.add(ROLE_MODULE.get(role, "other"), ca[role], cb[role])
            done.update(names)
            if progress is not None:
                progress(sum(a.tensors[n].nbytes for n in names))
    for name, info in a.tensors.items():
        if name in done or not is_float(info.dtype):
            continue
        module = "norms" if NORM.search(name) else "embeddings" if EMBED.search(name) else "other"
        dist.add(module, a.read(name), b.read(name))
        if progress is not None:
            progress(info.nbytes)
    return dist
