"""Alignment of ``mlp`` family models in the task graph: one AlignMLP task per source model reads the whole
model and the anchor (MLPs are small), finds each hidden layer's permutation (weight matching, activation
matching or a learned Deep-Align aligner) and hands every permuted tensor to the merges."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mergeflow.align.layer import LayerReport
from mergeflow.align.permute import PermuteParams
from mergeflow.deepalign.matching import activation_matching, weight_matching
from mergeflow.deepalign.mlp import MLPSpec, Weights, as_state, as_weights, mlp_inputs, mlp_spec, permute
from mergeflow.errors import RecipeError
from mergeflow.graph.tasks import Load
from mergeflow.io.reader import ModelReader
from mergeflow.recipe.schema import Recipe


@dataclass(frozen=True)
class AlignMLP:
    model: str
    spec: MLPSpec
    local: tuple[Load, ...]
    anchor: tuple[Load, ...]
    params: PermuteParams

    def deps(self) -> tuple[Any, ...]:
        return self.local + self.anchor

    def run(self, ctx: Any, *values: torch.Tensor) -> dict[str, torch.Tensor]:
        names = self.spec.names()
        n = len(names)
        local = as_weights(self.spec, dict(zip(names, values[:n], strict=True)))
        anchor = as_weights(self.spec, dict(zip(names, values[n:], strict=True)))
        start = time.perf_counter()
        perms = find_perms(self.spec, anchor, local, self.params)
        seconds = time.perf_counter() - start
        aligned = permute(local, perms)
        for i, ((wa, ba), (w0, b0), (w1, b1)) in enumerate(zip(anchor, local, aligned, strict=True)):
            before = float(((wa - w0) ** 2).sum() + ((ba - b0) ** 2).sum())
            after = float(((wa - w1) ** 2).sum() + ((ba - b1) ** 2).sum())
            ctx.align_reports.append(
                LayerReport(
                    self.model,
                    i,
                    [("before", {"ffn": before}), ("permute", {"ffn": after})],
                    {"permute": seconds} if i == 0 else {},
                )
            )
        return as_state(self.spec, aligned)


def find_perms(spec: MLPSpec, anchor: Weights, local: Weights, p: PermuteParams) -> list[torch.Tensor]:
    """Permutations of ``local``'s hidden units toward ``anchor``, by the step's method."""
    a = [(w.float().cpu(), b.float().cpu()) for w, b in anchor]
    b_ = [(w.float().cpu(), b.float().cpu()) for w, b in local]
    if p.method == "learned":
        from mergeflow.deepalign.aligner import load_aligner
        from mergeflow.deepalign.train import predict

        assert p.aligner is not None
        return predict(load_aligner(p.aligner, spec.sizes), a, b_)
    if p.method == "activations":
        from mergeflow.stats.data import load_data

        assert p.data is not None
        x = mlp_inputs(load_data(p.data).x, spec, p.data)[: p.batches * p.batch_size]
        return activation_matching(a, b_, x, spec.activation)
    return weight_matching(a, b_).perms


def check_mlp_steps(recipe: Recipe) -> PermuteParams:
    """The mlp family's one symmetry is the permutation of hidden units: a permute step, alone."""
    problems, found = [], None
    for i, step in enumerate(recipe.align):
        at = f"{recipe.located('align', i, step.name)}align[{i}].{step.name}"
        if step.name != "permute":
            problems.append(
                f"{at}: not valid for an mlp model: its only symmetry is a permutation of hidden units"
            )
            continue
        params = PermuteParams.model_validate(step.params)
        if params.heads or params.residual:
            problems.append(
                f"{at}: an mlp has no attention heads or residual stream; leave heads/residual out"
            )
        if found is not None:
            problems.append(f"{at}: one permute step is enough for an mlp")
        found = params
    if problems:
        raise RecipeError(problems)
    assert found is not None
    return found


class MLPAlignPlanner:
    """AlignPlanner's counterpart for the mlp family: ``input(model, tensor, rows)`` is what a merge reads."""

    def __init__(self, recipe: Recipe, readers: Mapping[str, ModelReader], anchor: str, load: Any) -> None:
        r = readers[anchor]
        self.spec = mlp_spec(r.config or {}, {k: t.shape for k, t in r.tensors.items()}, str(r.path))
        for name, other in readers.items():
            shapes = {k: t.shape for k, t in other.tensors.items()}
            if (
                name != anchor
                and mlp_spec(other.config or {}, shapes, str(other.path)).sizes != self.spec.sizes
            ):
                raise RecipeError([f"models.{name}: its layer sizes differ from the anchor's ({anchor})"])
        self.params = check_mlp_steps(recipe)
        self.anchor, self.load = anchor, load
        self.tasks: dict[str, AlignMLP] = {}

    def input(self, model: str, tensor: str, rows: tuple[int, int] | None) -> Any:
        from mergeflow.graph.align_tasks import Aligned

        if model == self.anchor or tensor not in self.spec.names():
            return self.load(model, tensor, rows)
        if model not in self.tasks:
            names = self.spec.names()
            self.tasks[model] = AlignMLP(
                model,
                self.spec,
                tuple(self.load(model, n, None) for n in names),
                tuple(self.load(self.anchor, n, None) for n in names),
                self.params,
            )
        return Aligned(self.tasks[model], tensor, rows)

    def layer_bytes(self) -> int:
        """Working set of one AlignMLP: both models in float32, twice (the permuted copy)."""
        return sum(self.load(self.anchor, n, None).numel for n in self.spec.names()) * 4 * 4
