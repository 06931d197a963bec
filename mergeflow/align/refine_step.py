"""refine: learned refinement of the residual map and the FFN permutations, on data (GLMC-style).

Starting from the weight-matched alignment of the steps before it, the orthogonal map of the stream
(kept orthogonal by projecting it through its SVD after every optimiser step) and one permutation per
layer's FFN (a straight-through estimator over linear-assignment projections of a latent matrix) are
trained to lower the task loss of the interpolated model (1 - l) anchor + l source at l drawn from
``lambda_range``. The result is still an exact re-parameterisation of the source. The training itself
runs in ``mergeflow.learn.refine``; this file declares the step and its parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from mergeflow.align.base import Found, Layer, StepParams, align_step
from mergeflow.arch.families import FAMILIES
from mergeflow.arch.spec import Geometry


class RefineParams(StepParams):
    data: str | None = Field(
        None,
        description="Training data (required) for the refinement (.npz with x, y; JSONL with text; or text), "
        "relative to the recipe.",
    )
    steps: int = Field(200, ge=1, le=100_000, description="Optimiser steps.")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate of the residual map.")
    perm_lr: float = Field(
        2e-2, gt=0.0, description="Adam learning rate of the permutations' latent matrices."
    )
    batch_size: int = Field(64, ge=1, description="Examples per step.")
    lambda_range: tuple[float, float] = Field(
        (0.4, 0.6), description="Interpolation weights are drawn uniformly from this range."
    )
    permutations: bool = Field(
        True, description="Also learn the FFN permutations (straight-through estimator)."
    )
    seed: int = Field(0, description="Seed of the batches and interpolation weights.")
    max_length: int | None = Field(
        None,
        ge=2,
        description="Tokens per text example. Default: the longest of the first 2000 examples', "
        "at most the model's positions.",
    )

    mode: Literal["auto", "whole", "layered"] = Field(
        "auto",
        description="whole: both models held whole (about 48 bytes per parameter, dense f x f permutation "
        "latents); layered: both models in float32 (8 bytes per parameter), each layer's weights built and "
        "recomputed under activation checkpointing, permutations learned on candidate edges; auto: whole "
        "when it fits the memory budget, else layered.",
    )
    candidates: int = Field(
        16,
        ge=1,
        description="layered mode: candidate units per FFN unit (its most similar units of the other model, "
        "both ways, plus itself) on which a permutation is learned; at least the FFN width gives the whole "
        "mode's permutations.",
    )

    @model_validator(mode="after")
    def _range(self) -> RefineParams:
        lo, hi = self.lambda_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError("lambda_range must be [low, high] with 0 <= low <= high <= 1")
        return self


def _in_list(i: int, steps: Sequence[tuple[str, StepParams | None]]) -> str | None:
    p = steps[i][1]
    if p is not None and getattr(p, "data", None) is None:
        return "needs 'data: PATH', the examples it trains on"
    if not any(getattr(q, "residual", False) for _n, q in steps[:i]):
        return "needs a residual step before it (permute: {residual: true} or orthogonal: {residual: true}) to start from"
    if i != len(steps) - 1:
        return "must be the last alignment step"
    return None


def _check(g: Geometry, p: RefineParams, family: str) -> str | None:
    if p.permutations and FAMILIES[family].experts is not None:
        return (
            f"{family} has experts, whose units refine does not learn yet; use refine: {{permutations: false}} "
            "(the stream map alone)"
        )
    return None


@align_step("refine", RefineParams, _check, in_list=_in_list, whole_model=True)
def refine(local: Layer, anchor: Layer, g: Geometry, p: RefineParams, found: Found = None) -> None:
    """Learned refinement of the residual map and FFN permutations on data (after a residual step)."""


def whole_bytes(numel: int, ffn: int, layers: int, p: RefineParams) -> int:
    """What the whole mode holds: both models in float64, a float32 anchor, the transformed and interpolated
    weights of its graph and the float64 inputs it saves for the backward pass (about 48 bytes per parameter,
    from bench_refine.py's peak RSS less the mapped checkpoints and the latents), and with permutations a
    float64 latent matrix per FFN with Adam's two moments."""
    return 48 * numel + (24 * ffn * ffn * layers if p.permutations else 0)


def layered_bytes(
    numel: int, layer_numel: int, outside_numel: int, ffn: int, layers: int, p: RefineParams
) -> int:
    """What the layered mode holds: both models in float32, one layer's transformed, interpolated and gradient
    copies (about 6 float32 copies), the tensors outside the stack likewise, and the edge latents with Adam."""
    edges = 24 * ffn * (2 * p.candidates + 1) * layers if p.permutations else 0
    return 8 * numel + 24 * layer_numel + 24 * outside_numel + edges
