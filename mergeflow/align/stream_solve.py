"""The coupled problem of a residual map and the per-layer steps, by coordinate descent.

Fix the stream's map R and every layer's steps solve their own problems exactly (head and FFN
permutations, rotations, rescales); fix the layers and R is one assignment or SVD over the summed
cross-correlations (``mergeflow.align.stream_map``). Each pass reads the models layer by layer through
the callables it is given, so memory stays per layer. The squared distance to the anchor over every
stream-facing and per-layer tensor is evaluated at each R tried; the best R is returned (a pass that
does not improve it by ``tol`` relative ends the group). With several groups (a permutation first, then
an orthogonal map) each starts from the best map so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mergeflow.align.base import Found, Layer, StepParams
from mergeflow.align.layer import full_distance, run_steps, sq_dist
from mergeflow.align.stream_map import ResidualMap, apply_layer, cross, layer_cross, solve
from mergeflow.arch.spec import ArchSpec

StreamPairs = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor, int]]]  # (anchor, source, axis)
LayerPairs = Callable[[], Iterable[tuple[int, Layer, Layer]]]  # (layer index, source, anchor), canonical


@dataclass
class ResidualReport:
    section = "residual"  # where the alignment report lists it
    model: str
    history: list[tuple[str, int, float]] = field(default_factory=list)  # (group, pass, distance at its R)
    seconds: float = 0.0
    identity: bool = True  # the chosen map is the identity

    def summary(self) -> dict[str, object]:
        best = min((h[2] for h in self.history), default=0.0)
        first = self.history[0][2] if self.history else 0.0
        return {
            "model": self.model,
            "passes": len(self.history),
            "distance_start": first,
            "distance_best": best,
            "identity": self.identity,
            "seconds": round(self.seconds, 3),
            "history": [{"group": g, "pass": i, "distance": d} for g, i, d in self.history],
        }


def evaluate(
    rmap: ResidualMap,
    stream: StreamPairs,
    layers: LayerPairs,
    spec: ArchSpec,
    steps: Sequence[tuple[str, StepParams]],
    folded: bool,
    found: Mapping[int, Found] | None = None,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Distance to the anchor with R and every layer solved under it; M for the next R from the tensors
    outside the stack, and from all of them."""
    d = spec.geometry.d_model
    m = torch.zeros(d, d, dtype=torch.float64)
    total = 0.0
    for anchor, local, axis in stream():
        total += sq_dist(anchor, rmap.apply(local, axis))
        m = m.to(anchor.device) + cross(anchor, local, axis)
    outside = m.clone()
    for index, mine, theirs in layers():
        apply_layer(mine, rmap, folded)
        run_steps(mine, theirs, spec, index, steps, found=(found or {}).get(index))
        total += full_distance(mine, theirs)
        apply_layer(mine, rmap, folded, undo=True)  # the per-layer transforms act on the other side
        c = layer_cross(mine, theirs, folded)
        if c is not None:
            m = m.to(c.device) + c
    return total, outside, m


def coordinate_descent(
    model: str,
    stream: StreamPairs,
    layers: LayerPairs,
    spec: ArchSpec,
    steps: Sequence[tuple[str, StepParams]],
    groups: Sequence[str],
    folded: bool,
    iterations: int,
    tol: float,
    device: torch.device | str = "cpu",
    on_pass: Callable[[str, int, float], None] | None = None,
    start_map: ResidualMap | None = None,
    found: Mapping[int, Found] | None = None,
) -> tuple[ResidualMap, ResidualReport]:
    """The best map over ``groups`` in turn; ``start_map``: where to start (a map found from activations),
    else the identity; ``found``: per layer, what activation matching found for the per-layer steps."""
    start = time.perf_counter()
    report = ResidualReport(model)
    best_map = start_map or ResidualMap.identity(spec.geometry.d_model, device)
    best = float("inf")
    if start_map is not None and not groups:  # the map activation matching found, alone: its distance
        best = evaluate(start_map, stream, layers, spec, steps, folded, found)[0]
        report.history.append(("activations", 0, best))
        if on_pass is not None:
            on_pass("activations", 0, best)
    for k, group in enumerate(groups):
        rmap, last = best_map, float("inf")
        for i in range(iterations):
            dist, outside_m, m = evaluate(rmap, stream, layers, spec, steps, folded, found)
            report.history.append((group, i, dist))
            if on_pass is not None:
                on_pass(group, i, dist)
            if dist < best:
                best, best_map = dist, rmap
            if last != float("inf") and last - dist <= tol * last or dist <= 1e-12 * report.history[0][2]:
                break
            last = dist
            # the first pass of the first group starts from the tensors outside the stack alone: under the
            # identity map every layer fits itself to the identity, a fixed point the embeddings escape
            rmap = solve(outside_m if k == 0 and i == 0 and start_map is None else m, group)
    report.seconds = time.perf_counter() - start
    report.identity = best_map.is_identity()
    return best_map, report
