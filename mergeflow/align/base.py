"""Alignment steps: each re-parameterises one layer of a model toward the anchor, exactly.

A step is one file: a frozen ``Params`` model and one function decorated with :func:`align_step`
that transforms a layer's canonical tensors (see ``mergeflow.arch.canonical``) in place, plus an
optional check that refuses the step for a model whose symmetries do not allow it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from mergeflow.arch.families import FAMILIES
from mergeflow.arch.spec import Geometry
from mergeflow.registry import Registry

Layer = dict[str, torch.Tensor]  # canonical role -> float64 tensor


class StepParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    layers: tuple[int, ...] | None = Field(
        None, description="Only these layer indices (default: every layer)."
    )


class NoModelParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# what activation matching found for one layer of one model ("ffn", "heads": permutations), or None
Found = Mapping[str, torch.Tensor] | None
# fn(local: Layer, anchor: Layer, geometry: Geometry, params: P, found: Found) -> counts of what its solves
# did for the report ({"certified": 1.0, ...}) or None, and
# check(geometry, params: P, family name) -> the refusal or None, where P is the step's own parameter model
# (a subclass of StepParams): typed loosely, since a function of a subclass is not one of StepParams
StepFn = Callable[..., "Mapping[str, float] | None"]
CheckFn = Callable[..., "str | None"]
# a rule about the step's place in the recipe's step list, checked without any model: (its index, every
# step as (name, parsed params, or None where they are invalid)) -> the problem, or None
ListCheck = Callable[[int, Sequence[tuple[str, "StepParams | None"]]], "str | None"]


@dataclass(frozen=True)
class StepDefinition:
    name: str
    fn: StepFn
    params: type[StepParams]
    check: CheckFn
    summary: str
    doc: str
    model_params: type[BaseModel] = NoModelParams  # steps have no per-model parameters
    in_list: ListCheck | None = None  # its rules about the step list (order, required parameters)
    # the map of the residual stream the step makes when its ``residual`` parameter is true: a permutation,
    # or an orthogonal map (its group follows the family's norm); "" for a step that maps no stream
    stream_map: Literal["", "permutation", "orthogonal"] = ""
    whole_model: bool = False  # runs once over the whole model, after the per-layer steps (refine)


STEPS: Registry[StepDefinition] = Registry("alignment step")


def _no_check(geom: Geometry, params: StepParams, family: str) -> str | None:
    return None


def align_step(
    name: str,
    params: type[StepParams],
    check: CheckFn = _no_check,
    in_list: ListCheck | None = None,
    stream_map: Literal["", "permutation", "orthogonal"] = "",
    whole_model: bool = False,
) -> Callable[[StepFn], StepFn]:
    def deco(fn: StepFn) -> StepFn:
        doc = (fn.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        STEPS.add(
            name,
            StepDefinition(
                name,
                fn,
                params,
                check,
                summary,
                doc,
                in_list=in_list,
                stream_map=stream_map,
                whole_model=whole_model,
            ),
        )
        return fn

    return deco


def heads(n: int, d_h: int, i: int) -> slice:
    """Rows (or columns) of head ``i`` in a (n*d_h, ...) projection."""
    assert 0 <= i < n
    return slice(i * d_h, (i + 1) * d_h)


EXPERT = re.compile(r"^(e\d+|es)\.")  # canonical roles of a mixture's experts: "e0.up", "es.down" (shared)


def module_role(role: str) -> str:
    """The role without its expert prefix: "e3.gate" -> "gate"."""
    m = EXPERT.match(role)
    return role[m.end() :] if m else role


def ffn_prefixes(layer: Layer) -> list[str]:
    """Each FFN of a layer, as its roles' prefix: "" for the dense one, "e0.", "e1.", ..., "es." for experts;
    each has its own hidden units to permute."""
    experts = {r[: -len("down")] for r in layer if r.endswith(".down") and EXPERT.match(r)}
    return ([""] if "down" in layer else []) + sorted(experts, key=lambda p: (p == "es.", len(p), p))


def head_rows(q: torch.Tensor, kv: torch.Tensor) -> tuple[tuple[str, torch.Tensor], ...]:
    """The roles whose rows follow the query heads (index ``q``) and the key/value heads (``kv``) when whole
    heads move: projections, their biases and full QK-norm weights."""
    return (
        ("q", q),
        ("q.b", q),
        ("q.norm", q),
        ("k", kv),
        ("k.b", kv),
        ("k.norm", kv),
        ("v", kv),
        ("v.b", kv),
    )


def sq(t: torch.Tensor) -> float:
    return float((t * t).sum())


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


def qk_fixed(geom: Geometry, touches_qk: bool, family: str, instead: str) -> str | None:
    """The refusal for a step that would transform queries/keys of a model that allows none."""
    if touches_qk and geom.qk_fixed:
        return f"{family}: {geom.qk_fixed}; use {instead}"
    return None


def stream_described(family: str, params: StepParams) -> str | None:
    """The refusal for a residual map on a family whose norms (hence stream) are not described."""
    if getattr(params, "residual", False) and not FAMILIES[family].stream:
        return f"{family}: its norms are not described, so the residual stream cannot be mapped"
    return None


class CoupledParams(StepParams):
    """Parameters of the coordinate descent that couples a residual-stream map with the per-layer steps."""

    residual: bool = Field(
        False,
        description="Also map the residual stream (one map shared by every layer, the "
        "embeddings and the head), solved jointly with the per-layer steps.",
    )
    iterations: int = Field(
        10, ge=1, le=1000, description="Most coordinate-descent passes per residual group."
    )
    tolerance: float = Field(
        1e-4, ge=0.0, description="Stop when a pass improves the distance by less than this fraction."
    )


class MatchedParams(CoupledParams):
    """A coupled step that can match by weights or by activations on data."""

    method: Literal["weights", "activations", "learned"] = Field(
        "weights",
        description="What units are matched by: their weights (no data), the correlation of their "
        "activations over 'data' (both models run on the same batches; works where weights stayed near their "
        "random initialisation), or a learned aligner ('aligner', made by `mergeflow learn-aligner`; permute "
        "on mlp models only).",
    )
    data: str | None = Field(
        None,
        description="Examples the activations are collected on (method: activations; "
        ".npz with x, JSONL with text, or text), relative to the recipe.",
    )
    batches: int = Field(
        8,
        ge=1,
        le=100_000,
        description="Batches of the data to collect activations over (method: activations).",
    )
    batch_size: int = Field(16, ge=1, description="Examples per batch (method: activations).")
    max_length: int | None = Field(
        None,
        ge=2,
        description="Tokens per text example (method: activations). Default: "
        "the longest of the first 2000 examples', at most the model's positions.",
    )


def method_problem(params: StepParams | None) -> str | None:
    """A MatchedParams step's method and data disagree (checked with the step list: they are two keys)."""
    method, data = getattr(params, "method", "weights"), getattr(params, "data", None)
    if method == "activations" and data is None:
        return "method: activations needs 'data: PATH', the examples to collect activations on"
    if method != "activations" and data is not None:
        return "'data' is only read with method: activations"
    aligner = getattr(params, "aligner", None)
    if method == "learned" and params is not None and "aligner" not in type(params).model_fields:
        return "method: learned exists for the permute step only (on mlp models)"
    if method == "learned" and aligner is None:
        return "method: learned needs 'aligner: PATH', a folder made by mergeflow learn-aligner"
    if method != "learned" and aligner is not None:
        return "'aligner' is only read with method: learned"
    return None


def maps_stream(name: str, params: StepParams | None) -> str:
    """The stream map (permutation / orthogonal) step ``name`` with ``params`` makes, or ""."""
    kind = STEPS[name].stream_map if name in STEPS else ""
    return kind if kind and getattr(params, "residual", False) else ""


def list_problems(steps: Sequence[tuple[str, StepParams | None]]) -> list[tuple[int, str]]:
    """(index, problem) for every step whose rules about the step list it breaks."""
    out = []
    for i, (name, _p) in enumerate(steps):
        info = STEPS.get(name) if name in STEPS else None
        why = info.in_list(i, steps) if info is not None and info.in_list is not None else None
        if why:
            out.append((i, why))
    return out
