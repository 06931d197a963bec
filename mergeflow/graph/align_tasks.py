"""Alignment in the task graph: one AlignLayer per (model, layer) reads that layer's tensors of the
model and of the anchor, runs the steps, and hands each re-parameterised tensor to the merges."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch

from mergeflow.align.base import StepParams, list_problems, maps_stream
from mergeflow.align.catalog import STEPS
from mergeflow.align.layer import align_layer, fold_only
from mergeflow.align.matching import Want
from mergeflow.align.refine_step import RefineParams, layered_bytes, whole_bytes
from mergeflow.arch.spec import ArchSpec, arch_spec
from mergeflow.arch.stream_layout import residual_layout
from mergeflow.errors import RecipeError
from mergeflow.graph.checks import check_steps
from mergeflow.graph.match_task import MatchModel, match_want
from mergeflow.graph.refine_task import RefineModel
from mergeflow.graph.stream_tasks import MapStream, SolveResidual, residual_plan
from mergeflow.graph.tasks import Load
from mergeflow.io.reader import ModelReader
from mergeflow.recipe.schema import Recipe


@dataclass(frozen=True)
class AlignLayer:
    model: str
    position: int  # index into ArchSpec.layers
    local: tuple[Load, ...]
    anchor: tuple[Load, ...]
    steps: tuple[tuple[str, StepParams], ...]
    residual: SolveResidual | None = None  # the stream's map of this model
    fold: bool = False  # norm scales folded into their readers (orthogonal stream maps); alone for the anchor
    match: MatchModel | None = None  # activation matching, when a step asks for it
    canonical: str = "float64"  # the recipe's align_dtype: the precision the layer is aligned in

    def deps(self) -> tuple[Any, ...]:
        return self.local + self.anchor + tuple(t for t in (self.residual, self.match) if t is not None)

    @property
    def laned(self) -> bool:
        """Runs in a lane of its own when the run has several (graph.lanes); the anchor's fold is cheap."""
        return bool(self.anchor)

    def run(self, ctx: Any, *values: Any) -> dict[str, torch.Tensor]:
        n, k = len(self.local), len(self.anchor)
        dev = ctx.device  # in a lane: the lane's device, the layer's tensors cross to it and back to ctx.home
        local = {ld.tensor: v.to(dev) for ld, v in zip(self.local, values[:n], strict=True)}
        spec: ArchSpec = ctx.arch
        layer = spec.layers[self.position]
        if not self.anchor:  # the anchor itself, folded
            return fold_only(spec, layer, local, ctx.compute_dtype, getattr(torch, self.canonical))
        anchor = {ld.tensor: v.to(dev) for ld, v in zip(self.anchor, values[n : n + k], strict=True)}
        rmap = values[n + k] if self.residual is not None else None
        found = values[-1].layers.get(layer.index) if self.match is not None else None
        found = {key: t.to(dev) for key, t in found.items()} if found is not None else None
        out, report = align_layer(
            spec,
            layer,
            local,
            anchor,
            self.steps,
            ctx.compute_dtype,
            self.model,
            rmap,
            self.fold,
            found,
            getattr(torch, self.canonical),
        )
        ctx.align_reports.append(report)
        home = ctx.home or dev
        return {name: t.to(home) for name, t in out.items()}


@dataclass(frozen=True)
class Aligned:
    """One tensor of a task that re-parameterises several at once (a layer, or a whole refined model)."""

    source: Any  # AlignLayer, RefineModel or mlp_align.AlignMLP: a task whose value maps names to tensors
    tensor: str
    rows: tuple[int, int] | None = None

    def deps(self) -> tuple[Any, ...]:
        return (self.source,)

    def run(self, ctx: Any, layer: dict[str, torch.Tensor]) -> torch.Tensor:
        """Handed over without a copy (a copy of a 7B model's layers costs seconds): a whole tensor leaves the
        source's dict, which nothing else reads it from (the executor copies for a second user that may
        overwrite it); a block of rows is a view of rows no other block covers."""
        if self.rows is None:
            return layer.pop(self.tensor)
        return layer[self.tensor][self.rows[0] : self.rows[1]]


def model_spec(readers: Mapping[str, ModelReader], anchor: str) -> ArchSpec:
    r = readers[anchor]
    return arch_spec(r.config, r.tensors, {n: t.shape for n, t in r.tensors.items()})


class AlignPlanner:
    """Makes (and shares) the AlignLayer tasks of a plan, and with a residual map its solve per model and the
    tasks that map the tensors outside the layer stack."""

    def __init__(
        self,
        recipe: Recipe,
        spec: ArchSpec,
        anchor: str,
        load: Any,
        reader: ModelReader,
        max_memory: int | None = None,
    ) -> None:
        self.spec, self.anchor, self.load = spec, anchor, load
        self.canonical = recipe.align_dtype
        self.numel = sum(t.numel for t in reader.tensors.values())  # the anchor's parameters
        self.shapes = {n: t.shape for n, t in reader.tensors.items()}
        self.steps = check_steps(recipe, spec)
        self.where = spec.layer_of()
        self.position = {lay.index: k for k, lay in enumerate(spec.layers)}
        self.tasks: dict[tuple[str, int], AlignLayer] = {}
        self.layout = self.residual = None
        if any(getattr(p, "residual", False) for _n, p in self.steps):
            self.layout = residual_layout(spec, self.shapes, reader.config or {})
            self.residual = residual_plan(self.steps, self.layout)
            if self.residual is not None and self.residual.fold and self.layout.no_orthogonal:
                i, name = next(
                    (i, n) for i, (n, p) in enumerate(self.steps) if maps_stream(n, p) == "orthogonal"
                )
                raise RecipeError(
                    [
                        f"{recipe.located('align', i, name)}align[{i}].{name}: not valid for "
                        f"this model: {self.layout.no_orthogonal}; use permute: {{residual: true}}"
                    ]
                )
        problems = list_problems(self.steps)  # the steps' rules about the list (validate checks them too)
        if problems:
            raise RecipeError(
                [
                    f"{recipe.located('align', i, self.steps[i][0])}align[{i}].{self.steps[i][0]}: {why}"
                    for i, why in problems
                ]
            )
        wanted = match_want(self.steps, self.layout)
        self.want: Want | None = wanted[0] if wanted is not None else None
        self.match_data = wanted[1] if wanted is not None else ""
        self.matches: dict[str, MatchModel] = {}
        self.solves: dict[str, SolveResidual] = {}
        self.refines: dict[str, RefineModel] = {}
        self.refine = next(((i, p) for i, (n, p) in enumerate(self.steps) if STEPS[n].whole_model), None)
        self.anchor_dir = str(reader.path)
        self.refine_params = cast(RefineParams, self.refine[1]) if self.refine is not None else None
        self.refine_sizes = self._refine_sizes(self.refine_params) if self.refine_params is not None else None
        self.layered = self.refine_params is not None and self._layered(self.refine_params, max_memory)

    def _refined(self, model: str) -> RefineModel:
        if model not in self.refines:
            solve = self._solve(model)
            assert self.refine_params is not None and self.refine_sizes is not None
            assert self.layout is not None and self.residual is not None and solve
            self.refines[model] = RefineModel(
                model,
                self.anchor,
                self.anchor_dir,
                self.spec,
                self.layout,
                self.steps,
                self.refine_params,
                self.residual,
                solve,
                self._match(model),
                self.layered,
                self.canonical,
                self.refine_sizes[0] if self.refine_params.mode == "auto" else None,
            )
        return self.refines[model]

    def _refine_sizes(self, p: RefineParams) -> tuple[int, int]:
        """(whole mode's, layered mode's) memory need, in bytes."""
        lay = self.spec.layers[0]
        layer = sum(math.prod(self.shapes[n]) for n in lay.tensors())
        f = self.spec.ffn_width(self.shapes.__getitem__)
        count = len(self.spec.layers)
        outside = max(0, self.numel - count * layer)
        return whole_bytes(self.numel, f, count, p), layered_bytes(self.numel, layer, outside, f, count, p)

    def _layered(self, p: RefineParams, max_memory: int | None) -> bool:
        """refine's mode: as asked, or (auto) whole when it fits the budget."""
        if p.mode != "auto":
            return p.mode == "layered"
        return max_memory is not None and self.refine_sizes is not None and self.refine_sizes[0] > max_memory

    def _match(self, model: str) -> MatchModel | None:
        if self.want is None:
            return None
        if model not in self.matches:
            self.matches[model] = MatchModel(
                model, self.anchor, self.anchor_dir, self.spec, self.want, self.match_data
            )
        return self.matches[model]

    def _solve(self, model: str) -> SolveResidual | None:
        if self.residual is None or self.layout is None:
            return None
        if model not in self.solves:
            self.solves[model] = SolveResidual(
                model, self.anchor, self.spec, self.layout, self.residual, self.steps, self._match(model)
            )
        return self.solves[model]

    def input(self, model: str, tensor: str, rows: tuple[int, int] | None) -> Any:
        """What a merge reads for ``tensor`` of ``model``: the aligned tensor, or the file's."""
        fold = self.residual is not None and self.residual.fold
        st = self.layout.get(tensor) if self.layout is not None else None
        if self.refine is not None and model != self.anchor and (st is not None or tensor in self.where):
            return Aligned(self._refined(model), tensor, rows)
        if st is not None:
            return self._stream(model, st, fold, rows)
        if tensor not in self.where or (model == self.anchor and not fold):
            return self.load(model, tensor, rows)
        pos = self.position[self.where[tensor]]
        key = (model, pos)
        if key not in self.tasks:
            names = self.spec.layers[pos].tensors()
            mine = tuple(self.load(model, n, None) for n in names)
            if model == self.anchor:
                self.tasks[key] = AlignLayer(model, pos, mine, (), (), None, True, canonical=self.canonical)
            else:
                self.tasks[key] = AlignLayer(
                    model,
                    pos,
                    mine,
                    tuple(self.load(self.anchor, n, None) for n in names),
                    self.steps,
                    self._solve(model),
                    fold,
                    self._match(model),
                    self.canonical,
                )
        return Aligned(self.tasks[key], tensor, rows)

    def _stream(self, model: str, st: Any, fold: bool, rows: tuple[int, int] | None) -> Any:
        solve = None if model == self.anchor else self._solve(model)
        if solve is None and not (fold and st.kind in ("final_norm", "final_norm.b", "head")):
            return self.load(model, st.name, rows)
        gamma = (
            self.load(model, self.layout.final_norm, None)  # type: ignore[union-attr]
            if fold and st.kind in ("head", "final_norm.b") and self.layout.final_norm  # type: ignore[union-attr]
            else None
        )
        whole = st.axis == 0  # rows of the stream itself: map the whole tensor, then cut
        return MapStream(
            self.load(model, st.name, None if whole else rows),
            st.axis,
            st.kind,
            fold,
            solve,
            gamma,
            rows if whole else None,
            self.spec.family.norm_offset,
        )

    def whole_model_bytes(self) -> tuple[int, str] | None:
        """About what a task holding whole models needs, and what it is: refine in the mode the planner chose
        (mergeflow.align.refine_step.whole_bytes / layered_bytes); activation matching two float32 models (8
        bytes per parameter)."""
        if self.refine_sizes is not None:
            whole, layered = self.refine_sizes
            if self.layered:
                return layered, "refine (mode: layered: both models in float32 and one layer's working set)"
            return whole, "refine (it holds both models whole: float64 copies, a float32 model, the graph)"

        if self.want is not None:
            return 8 * self.numel, "activation matching (it runs both models whole, in float32)"
        return None

    def layer_bytes(self) -> int:
        """Working set of one AlignLayer: both models' layer tensors in the canonical precision, plus copies."""
        lay = self.spec.layers[0]
        numel = sum(self.load(self.anchor, n, None).numel for n in lay.tensors())
        return numel * (4 if self.canonical == "float32" else 8) * 4
