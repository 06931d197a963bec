"""Residual-stream alignment in the task graph.

``SolveResidual`` (one per source model) runs the coordinate descent, reading both models layer by layer
straight from their readers on every pass, and yields the stream's map. ``StreamTensor`` tasks apply it
to the tensors outside the layer stack (embeddings, final norm, head); the layers get it through their
``AlignLayer`` tasks. With an orthogonal map every model, the anchor included, has its norm scales folded
into the weights that read them (the anchor's tensors change, not its function).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mergeflow.align.base import StepParams, maps_stream
from mergeflow.align.matching import Found
from mergeflow.align.stream_map import ResidualMap, fold_layer, map_stream, stream_value
from mergeflow.align.stream_solve import coordinate_descent
from mergeflow.arch.canonical import to_canonical
from mergeflow.arch.spec import ArchSpec
from mergeflow.arch.stream_layout import ResidualLayout
from mergeflow.graph.match_task import MatchModel, stream_group
from mergeflow.graph.tasks import Load


@dataclass(frozen=True)
class ResidualPlan:
    groups: tuple[str, ...]  # solved by weights, in turn: permutation, then orthogonal / orthogonal_centred
    fold: bool
    iterations: int
    tolerance: float
    from_data: str | None = (
        None  # the group of the map activation matching finds first (the others start there)
    )

    @property
    def orthogonal(self) -> str | None:
        """The orthogonal group the stream map lives in (found from weights or from data), or None."""
        return next((g for g in (*self.groups, self.from_data) if g is not None and g != "permutation"), None)


def residual_plan(steps: tuple[tuple[str, StepParams], ...], layout: ResidualLayout) -> ResidualPlan | None:
    by_weights: list[str] = []
    from_data: list[str] = []
    iterations, tol = 0, 0.0
    for name, params in steps:
        kind = maps_stream(name, params)
        if kind:
            group = "permutation" if kind == "permutation" else stream_group(layout.norm)
            (from_data if getattr(params, "method", "weights") == "activations" else by_weights).append(group)
            iterations, tol = max(iterations, params.iterations), max(tol, params.tolerance)  # type: ignore[attr-defined]
    if not by_weights and not from_data:
        return None
    data_group = max(
        from_data, key=lambda g: g != "permutation", default=None
    )  # an orthogonal map covers both
    if data_group is not None:  # the weight groups refine the map the data found; none it already covers
        by_weights = [
            g for g in by_weights if g != data_group and not (g == "permutation" and data_group != g)
        ]
    by_weights.sort(
        key=lambda g: g != "permutation"
    )  # the combinatorial map first, refined by the continuous one
    fold = any(g != "permutation" for g in [*by_weights, *from_data])
    return ResidualPlan(tuple(by_weights), fold, iterations, tol, data_group)


def _read(ctx: Any, model: str, name: str) -> torch.Tensor:
    return ctx.readers[model].read(name, dtype=torch.float64, device=ctx.device)


@dataclass(frozen=True)
class SolveResidual:
    reads_whole_models: ClassVar[bool] = True  # its shards are read outside the plan's loads
    model: str
    anchor: str
    spec: ArchSpec
    layout: ResidualLayout
    plan: ResidualPlan
    steps: tuple[tuple[str, StepParams], ...]
    match: MatchModel | None = None  # activation matching, when a step asks for it

    def deps(self) -> tuple[Any, ...]:
        return (self.match,) if self.match is not None else ()

    def run(self, ctx: Any, found: Found | None = None) -> ResidualMap:
        fold = self.plan.fold
        gammas = {
            m: (_read(ctx, m, self.layout.final_norm) if fold and self.layout.final_norm else None)
            for m in (self.model, self.anchor)
        }

        def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
            for st in self.layout.tensors:
                if fold and st.kind == "final_norm":
                    continue  # 1 in both
                a, b = (
                    stream_value(_read(ctx, m, st.name), st.kind, fold, gammas[m], self.layout.norm_offset)
                    for m in (self.anchor, self.model)
                )
                yield a, b, st.axis

        def layers() -> Iterator[tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
            for lay in self.spec.layers:
                canon = []
                for m in (self.model, self.anchor):
                    c = to_canonical(self.spec, lay, {n: _read(ctx, m, n) for n in lay.tensors()})
                    if fold:
                        fold_layer(c, self.spec.family.norm_offset)
                    canon.append(c)
                yield lay.index, canon[0], canon[1]

        def on_pass(group: str, i: int, dist: float) -> None:
            if ctx.note is not None:
                ctx.note(f"residual map of {self.model}: {group} pass {i + 1}, distance {dist:.4g}")

        rmap, report = coordinate_descent(
            self.model,
            stream,
            layers,
            self.spec,
            self.steps,
            self.plan.groups,
            fold,
            self.plan.iterations,
            self.plan.tolerance,
            ctx.device,
            on_pass,
            found.stream if found is not None else None,
            found.layers if found is not None else None,
        )
        ctx.align_reports.append(report)
        return rmap


@dataclass(frozen=True)
class MapStream:
    """One tensor outside the stack of one model: folded (with an orthogonal map) and mapped (sources)."""

    tensor: Load
    axis: int
    kind: str
    fold: bool
    solve: SolveResidual | None  # None for the anchor: folded only
    gamma: Load | None  # the final norm's scale, for a head when folding
    rows: tuple[int, int] | None = None
    offset: float = 0.0  # the family's norm_offset

    def deps(self) -> tuple[Any, ...]:
        return (
            (self.tensor,)
            + ((self.gamma,) if self.gamma is not None else ())
            + ((self.solve,) if self.solve is not None else ())
        )

    def run(self, ctx: Any, t: torch.Tensor, *rest: Any) -> torch.Tensor:
        rest_l = list(rest)
        gamma = rest_l.pop(0) if self.gamma is not None else None
        rmap: ResidualMap | None = rest_l.pop(0) if self.solve is not None else None
        dtype = t.dtype
        out = map_stream(t.to(torch.float64), self.kind, self.axis, rmap, self.fold, gamma, self.offset)
        if self.rows is not None:
            out = out[self.rows[0] : self.rows[1]]
        return out.to(dtype).contiguous()
