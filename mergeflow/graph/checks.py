"""Checks of the models against each other and of each tensor's settings, made while planning."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from pydantic import BaseModel

from mergeflow.align.base import StepParams
from mergeflow.align.catalog import STEPS
from mergeflow.arch.spec import ArchSpec
from mergeflow.errors import MissingTensor, ModelError, RecipeError, ShapeMismatch, UnsupportedArchitecture
from mergeflow.io.dtypes import is_float
from mergeflow.io.reader import ModelReader
from mergeflow.recipe.schema import Recipe

HINT = (
    "; to merge the rest, say what to do with tensors only some models have (partial: drop, or "
    "partial: {keep: MODEL}), or merge the backbone only (merge_only: backbone)"
)


def check_models(
    recipe: Recipe,
    readers: Mapping[str, ModelReader],
    ref: str,
    vocab: Mapping[str, object],
    copied: Callable[[str], bool],
) -> None:
    types = {n: r.model_type for n, r in readers.items() if r.model_type is not None}
    if len(set(types.values())) > 1:
        desc = ", ".join(f"{n} is {t}" for n, t in types.items())
        odd = next((n for n, t in types.items() if t != types.get(ref, t)), next(iter(types)))
        raise UnsupportedArchitecture(
            f"{recipe.located('models', odd)}models.{odd}: models have different architectures ({desc})"
        )
    ref_tensors = readers[ref].tensors
    for name, r in readers.items():
        for t, info in ref_tensors.items():
            other = r.tensors.get(t)
            if other is None:
                raise MissingTensor(
                    f"{recipe.located('models', name)}model '{name}' ({r.path}) lacks tensor {t!r} that "
                    f"model '{ref}' has{HINT}"
                )
            if other.shape != info.shape and t not in vocab and not copied(t):
                raise ShapeMismatch(
                    f"{recipe.located('models', name)}tensor {t!r}: shape {list(other.shape)} in model '{name}' but "
                    f"{list(info.shape)} in model '{ref}'"
                )
        extra = [t for t in r.tensors if t not in ref_tensors]
        if extra:
            more = f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""
            raise MissingTensor(
                f"{recipe.located('models', name)}model '{name}' has tensor(s) {', '.join(map(repr, extra[:3]))}{more} that "
                f"model '{ref}' lacks{HINT}"
            )


def describe_override(recipe: Recipe, i: int) -> str:
    ov = recipe.overrides[i]
    return f"overrides[{i}] ({'regex' if ov.regex is not None else 'match'}: {ov.regex or ov.match!r})"


def check_kinds(tname: str, dtypes: Mapping[str, str], op: str) -> None:
    """Floats merge with floats; integer and boolean tensors are only ever copied (passthrough)."""
    floats = sorted(m for m, d in dtypes.items() if is_float(d))
    others = sorted(m for m, d in dtypes.items() if not is_float(d))
    if floats and others and op != "passthrough":
        raise ModelError(
            f"tensor {tname!r} holds floats in {', '.join(map(repr, floats))} ({dtypes[floats[0]]}) but "
            f"{dtypes[others[0]]} in {', '.join(map(repr, others))}; integer tensors are only copied: give "
            "them a passthrough override or fix the checkpoint"
        )


def check_finite(tname: str, op: str, params: BaseModel, mparams: Mapping[str, BaseModel]) -> None:
    """Every numeric parameter, after gradients are evaluated at this tensor's layer, is finite."""
    for who, p in [("", params), *((f" for model '{m}'", mp) for m, mp in mparams.items())]:
        for key, value in p.model_dump().items():
            if isinstance(value, float) and not math.isfinite(value):
                raise RecipeError(
                    [f"tensor {tname!r}: {op} parameter {key!r}{who} is {value} (must be finite)"]
                )


def check_steps(recipe: Recipe, spec: ArchSpec) -> tuple[tuple[str, StepParams], ...]:
    """Validated step parameters; a step the family's symmetries do not allow is a recipe error."""
    steps, problems = [], []
    for i, step in enumerate(recipe.align):
        info = STEPS[step.name]
        params = info.params.model_validate(step.params)
        why = info.check(spec.geometry, params, spec.family.name)
        if why:
            problems.append(
                f"{recipe.located('align', i, step.name)}align[{i}].{step.name}: not valid for this "
                f"model: {why}"
            )
        steps.append((step.name, params))
    if problems:
        raise RecipeError(problems)
    return tuple(steps)
