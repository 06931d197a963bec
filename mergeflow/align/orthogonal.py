"""orthogonal: an orthogonal map of the residual stream (GLMC-style), solved jointly with the per-layer steps.

The stream of a pre-norm transformer can be rotated by any orthogonal R once each norm's scale is
folded into the weights that read it: RMSNorm(R x) = R RMSNorm(x). LayerNorm also centres, which
commutes with R exactly when R keeps the all-ones vector (R 1 = 1): those are the maps used for
LayerNorm families (GPT-2, ViT), solved on the complement of 1. Post-norm blocks (BERT) normalise the
stream itself, so only permutations are exact there. The step does nothing per layer: the map is
solved before the layers by coordinate descent (``mergeflow.align.stream_solve``), and the other steps
of the recipe run inside that loop. With ``method: activations`` the map is instead the orthogonal
Procrustes solution of the two models' stream activations on data (their cross second moments, summed
over the embeddings and every block's output), in one solve.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from mergeflow.align.base import (
    Found,
    Layer,
    MatchedParams,
    StepParams,
    align_step,
    method_problem,
    stream_described,
)
from mergeflow.arch.families import FAMILIES
from mergeflow.arch.spec import Geometry


class OrthogonalParams(MatchedParams):
    residual: bool = Field(
        True,
        description="Map the residual stream by an orthogonal matrix (the only map "
        "this step makes; false turns the step off).",
    )
    untie: bool = Field(
        False,
        description="Models whose output head is tied to their input embeddings are read "
        "untied, so the final norm's scale can fold into a head of their own; the output is written "
        "untied (one more vocabulary x hidden matrix). Without it such models are refused.",
    )


def _check(geom: Geometry, p: OrthogonalParams, family: str) -> str | None:
    fam = FAMILIES[family]
    if p.residual and (fam.post_ln or fam.norms_on_outputs()):
        what = (
            "is post-norm: its residual stream is a LayerNorm output"
            if fam.post_ln
            else "normalises each block's output before adding it to the stream"
        )
        return f"{family} {what}, which only permutations map exactly; use permute: {{residual: true}}"
    return stream_described(family, p)


def _in_list(i: int, steps: Sequence[tuple[str, StepParams | None]]) -> str | None:
    return method_problem(steps[i][1])


@align_step("orthogonal", OrthogonalParams, _check, in_list=_in_list, stream_map="orthogonal")
def orthogonal(local: Layer, anchor: Layer, g: Geometry, p: OrthogonalParams, found: Found = None) -> None:
    """Residual stream by an orthogonal map (pre-norm families; norm scales folded into their readers)."""
