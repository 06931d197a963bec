"""Align one layer of a model to the anchor: canonical form, steps in order, distances, back."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mergeflow.align.base import Found, Layer, StepParams, module_role
from mergeflow.align.catalog import STEPS
from mergeflow.align.stream_map import ResidualMap, apply_layer, fold_layer
from mergeflow.arch.canonical import from_canonical, to_canonical
from mergeflow.arch.spec import ArchSpec, LayerNames

DIST_BLOCK = 1 << 16  # entries per block of a float32 distance: one reused, cache-sized buffer
MODULES = {
    "qk": ("q", "q.b", "k", "k.b"),
    "vo": ("v", "v.b", "o"),
    "ffn": ("up", "up.b", "gate", "gate.b", "down"),
}


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||^2. float64: as ||a||^2 + ||b||^2 - 2<a, b>, three reductions and no difference tensor (the
    cancellation error stays near 1e-16 of the norms). Lower precisions would lose the distance to that
    cancellation: the difference of small blocks into one reused buffer, each block's squares summed in its
    dtype (64K terms: a relative error near 1e-8) and the blocks in float64. No allocation per block: fresh
    blocks made every distance pay page faults (half the time of an alignment without solves at 7B)."""
    a, b = a.reshape(-1), b.reshape(-1)
    if a.dtype == torch.float64:
        return max(float(torch.dot(a, a) + torch.dot(b, b) - 2 * torch.dot(a, b)), 0.0)
    n = a.numel()
    buf = torch.empty(min(n, DIST_BLOCK), dtype=a.dtype, device=a.device)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, n, DIST_BLOCK):
        d = buf[: min(DIST_BLOCK, n - i)]
        torch.sub(a[i : i + DIST_BLOCK], b[i : i + DIST_BLOCK], out=d)
        total += torch.dot(d, d)
    return float(total)


def distances(local: Layer, anchor: Layer) -> dict[str, float]:
    """Squared Frobenius distance to the anchor per module (qk, vo, ffn) of one layer."""
    return {
        m: sum(sq_dist(local[r], anchor[r]) for r in local if module_role(r) in roles)
        for m, roles in MODULES.items()
    }


def full_distance(local: Layer, anchor: Layer) -> float:
    """Squared distance over every role of the layer (norms and stream biases included)."""
    return sum(sq_dist(local[r], anchor[r]) for r in local)


def run_steps(
    local: Layer,
    anchor: Layer,
    spec: ArchSpec,
    index: int,
    steps: Sequence[tuple[str, StepParams]],
    report: LayerReport | None = None,
    found: Found = None,
) -> None:
    """The recipe's per-layer steps in order, on canonical tensors, in place; ``found``: what activation
    matching found for this layer."""
    for name, params in steps:
        if params.layers is not None and index not in params.layers:
            continue
        start = time.perf_counter()
        counts = STEPS[name].fn(local, anchor, spec.geometry, params, found)
        if report is not None:
            report.seconds[name] = report.seconds.get(name, 0.0) + time.perf_counter() - start
            add_counts(report.counts, name, counts or {})
            report.steps.append((name, distances(local, anchor)))


def add_counts(into: dict[str, dict[str, float]], step: str, counts: Mapping[str, float]) -> None:
    """Add a step's solve counts to the per-step totals ``into``."""
    mine = into.setdefault(step, {})
    for key, value in counts.items():
        mine[key] = mine.get(key, 0.0) + value


@dataclass
class LayerReport:
    model: str
    layer: int
    steps: list[tuple[str, dict[str, float]]]  # ("before", d), (step name, d after it), ...
    seconds: dict[str, float] = field(default_factory=dict)  # solve time per step
    counts: dict[str, dict[str, float]] = field(default_factory=dict)  # what a step's solves did, per step


def align_layer(
    spec: ArchSpec,
    layer: LayerNames,
    local_stored: dict[str, torch.Tensor],
    anchor_stored: dict[str, torch.Tensor],
    steps: Sequence[tuple[str, StepParams]],
    dtype: torch.dtype,
    model: str = "",
    residual: ResidualMap | None = None,
    fold: bool = False,
    found: Found = None,
    canonical: torch.dtype = torch.float64,
) -> tuple[dict[str, torch.Tensor], LayerReport]:
    """The layer's tensors re-parameterised toward the anchor (same function), and the distances.
    ``fold``: norm scales folded into their readers first (both models); ``residual``: the stream's map,
    applied before the steps; ``found``: the layer's permutations from activation matching; ``canonical``: the
    precision the layer is aligned in (the recipe's ``align_dtype``)."""
    local = to_canonical(spec, layer, local_stored, canonical)
    anchor = to_canonical(spec, layer, anchor_stored, canonical)
    if fold:
        fold_layer(local, spec.family.norm_offset)
        fold_layer(anchor, spec.family.norm_offset)
    report = LayerReport(model, layer.index, [("before", distances(local, anchor))])
    if residual is not None:
        apply_layer(local, residual, fold)
        report.steps.append(("residual", distances(local, anchor)))
    run_steps(local, anchor, spec, layer.index, steps, report, found)
    return from_canonical(spec, layer, local, dtype), report


def fold_only(
    spec: ArchSpec,
    layer: LayerNames,
    stored: dict[str, torch.Tensor],
    dtype: torch.dtype,
    canonical: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    """The anchor's layer with its norm scales folded (the same re-parameterisation its sources get)."""
    canon = to_canonical(spec, layer, stored, canonical)
    fold_layer(canon, spec.family.norm_offset)
    return from_canonical(spec, layer, canon, dtype)
