"""Per-tensor settings: which operator and which parameter values apply to one tensor.

Precedence, lowest first: the operator's parameters under ``merge``; ``models.X.params``;
then each matching override in order (its ``params``, then its ``models.X``). An override
with its own ``merge`` switches the operator and starts from that operator's parameters.
Gradients are evaluated at the tensor's layer position (0 = first layer, 1 = last).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mergeflow.patterns import compile_glob, compile_regex
from mergeflow.recipe.params import OperatorLike, interpolate, split_params
from mergeflow.recipe.schema import Recipe


@dataclass(frozen=True)
class TensorSettings:
    op: str
    params: dict[str, Any]
    model_params: dict[str, dict[str, Any]]


class Resolver:
    def __init__(self, recipe: Recipe, operators: Mapping[str, OperatorLike]) -> None:
        self.recipe, self.operators = recipe, operators
        self._matchers = [
            compile_regex(ov.regex) if ov.regex is not None else compile_glob(ov.match or "")
            for ov in recipe.overrides
        ]
        self.hits = [0] * len(
            recipe.overrides
        )  # tensors each override selected (unused overrides are reported)

    def matching(self, name: str) -> list[int]:
        """Indices of the overrides that select ``name`` (glob: whole name; regex: searched)."""
        out = []
        for i, matches in enumerate(self._matchers):
            if matches(name):
                out.append(i)
                self.hits[i] += 1
        return out

    def __call__(self, name: str, position: float) -> TensorSettings:
        r = self.recipe
        spec = r.merge
        layers: list[dict[str, Any]] = [
            dict(spec.params)
        ]  # op-level raw params (global + per-model defaults)
        per_model: dict[str, list[dict[str, Any]]] = {m: [dict(e.params)] for m, e in r.models.items()}
        for i in self.matching(name):
            ov = r.overrides[i]
            if ov.merge is not None:
                spec = ov.merge
                layers = [dict(spec.params)]
                per_model = {m: [dict(e.params)] for m, e in r.models.items()}
            layers.append(dict(ov.params))
            for m in per_model:
                per_model[m].append({**ov.params, **ov.models.get(m, {})})
        op = self.operators[spec.name]
        glob: dict[str, Any] = {}
        for raw in layers:
            glob.update(split_params(op, raw)[0])
        defaults = split_params(op, layers[0])[1]
        models: dict[str, dict[str, Any]] = {}
        for m, chain in per_model.items():
            vals = dict(defaults)
            for raw in chain:
                vals.update(split_params(op, raw)[1])
            models[m] = {k: interpolate(v, position) for k, v in vals.items()}
        return TensorSettings(spec.name, {k: interpolate(v, position) for k, v in glob.items()}, models)
