"""fisher: Fisher-weighted averaging (Matena & Raffel, 2022, "Merging Models with Fisher Weighting")."""

from __future__ import annotations

from pydantic import Field

from mergeflow.merge.base import OpParams, StatsFallbackParams, merge_operator


class FisherParams(StatsFallbackParams):
    epsilon: float = Field(
        1e-8,
        ge=0.0,
        description="Floor under every Fisher entry, so that parameters no "
        "model is informative about fall back to the weighted average.",
    )
    normalize: bool = Field(
        True,
        description="Divide each model's Fisher by its mean over the whole model "
        "(from its statistics file), so models whose Fishers differ in scale count alike. On "
        "by default: Fishers of different tasks differ by orders of magnitude (31x between a "
        "sentiment and an NER fine-tune of one encoder), and without it the model with the "
        "largest Fisher takes nearly every entry. false: Matena & Raffel's plain formula.",
    )


class FisherModelParams(OpParams):
    weight: float = Field(1.0, ge=0.0, description="Weight of this model.")


@merge_operator(
    "fisher", params=FisherParams, model_params=FisherModelParams, elementwise=True, work=3.0, stats="fisher"
)
def fisher(tensors, base, p: FisherParams, mp, ctx):
    """sum_i w_i F_i x_i / sum_i w_i F_i, with F_i floored at epsilon (statistics: fisher)."""
    num = None
    den = None
    for i, (x, m, f) in enumerate(zip(tensors, mp, ctx.stats, strict=True)):
        scale = ctx.stats_scale[i] if p.normalize and ctx.stats_scale and ctx.stats_scale[i] > 0 else 1.0
        wf = f.div(scale).clamp_(min=p.epsilon).mul_(m.weight)
        num = x.mul_(wf) if num is None else num.add_(x.mul_(wf))
        den = wf if den is None else den.add_(wf)
    assert num is not None and den is not None  # an operator always gets at least one model
    # den > 0 everywhere when epsilon > 0 and some weight > 0: check (a device sync) only otherwise
    if (p.epsilon <= 0.0 or not any(m.weight > 0 for m in mp)) and float(den.min()) <= 0.0:
        raise ValueError("the weighted Fishers sum to 0 somewhere (all weights 0, or epsilon 0)")
    return num.div_(den)
