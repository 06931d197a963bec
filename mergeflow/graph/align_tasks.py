"""Alignment in the task graph: one AlignLayer per (model, layer) reads that layer's tensors of the
model and of the anchor, runs the steps, and hands each re-parameterised tensor to the merges."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mergeflow.align.base import StepParams
from mergeflow.align.catalog import STEPS
from mergeflow.align.layer import align_layer
from mergeflow.arch.spec import ArchSpec, arch_spec
from mergeflow.errors import RecipeError
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

    def deps(self) -> tuple[Any, ...]:
        return self.local + self.anchor

    def run(self, ctx: Any, *values: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(self.local)
        local = {ld.tensor: v for ld, v in zip(self.local, values[:n], strict=True)}
        anchor = {ld.tensor: v for ld, v in zip(self.anchor, values[n:], strict=True)}
        spec: ArchSpec = ctx.arch
        out, report = align_layer(spec, spec.layers[self.position], local, anchor, self.steps, ctx.compute_dtype,
                                  self.model)
        ctx.align_reports.append(report)
        return out


@dataclass(frozen=True)
class Aligned:
    source: AlignLayer
    tensor: str
    rows: tuple[int, int] | None = None

    def deps(self) -> tuple[Any, ...]:
        return (self.source,)

    def run(self, ctx: Any, layer: dict[str, torch.Tensor]) -> torch.Tensor:
        t = layer[self.tensor]
        return (t if self.rows is None else t[self.rows[0]:self.rows[1]]).clone()


def check_steps(recipe: Recipe, spec: ArchSpec) -> tuple[tuple[str, StepParams], ...]:
    """Validated step parameters; a step the family's symmetries do not allow is a recipe error."""
    steps, problems = [], []
    for i, step in enumerate(recipe.align):
        info = STEPS[step.name]
        params = info.params.model_validate(step.params)
        why = info.check(spec.geometry, params, spec.family.name)
        if why:
            problems.append(f"align[{i}].{step.name}: not valid for this model: {why}")
        steps.append((step.name, params))
    if problems:
        raise RecipeError(problems)
    return tuple(steps)


def model_spec(readers: Mapping[str, ModelReader], anchor: str) -> ArchSpec:
    r = readers[anchor]
    return arch_spec(r.config, r.tensors, {n: t.shape for n, t in r.tensors.items()})


class AlignPlanner:
    """Makes (and shares) the AlignLayer tasks of a plan."""

    def __init__(self, recipe: Recipe, spec: ArchSpec, anchor: str, load: Any) -> None:
        self.spec, self.anchor, self.load = spec, anchor, load
        self.steps = check_steps(recipe, spec)
        self.where = spec.layer_of()
        self.position = {lay.index: k for k, lay in enumerate(spec.layers)}
        self.tasks: dict[tuple[str, int], AlignLayer] = {}

    def input(self, model: str, tensor: str, rows: tuple[int, int] | None) -> Any:
        """What a merge reads for ``tensor`` of ``model``: the aligned tensor, or the file's."""
        if model == self.anchor or tensor not in self.where:
            return self.load(model, tensor, rows)
        pos = self.position[self.where[tensor]]
        key = (model, pos)
        if key not in self.tasks:
            names = self.spec.layers[pos].tensors()
            self.tasks[key] = AlignLayer(model, pos, tuple(self.load(model, n, None) for n in names),
                                         tuple(self.load(self.anchor, n, None) for n in names), self.steps)
        return Aligned(self.tasks[key], tensor, rows)

    def layer_bytes(self) -> int:
        """Working set of one AlignLayer: both models' layer tensors in float64, plus copies."""
        lay = self.spec.layers[0]
        numel = sum(self.load(self.anchor, n, None).numel for n in lay.tensors())
        return numel * 8 * 4
