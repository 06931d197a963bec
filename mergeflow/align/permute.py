"""permute: FFN neurons by linear assignment (weight matching), optionally whole attention heads.

An FFN hidden unit is a row of W_in (and of W_gate in gated MLPs, which must move with it), its
bias, and a column of W_out: permuting all of them together leaves the function unchanged. The
best permutation maximises <W_in2, P W_in1> + <W_out2, W_out1 P^T> (+ gate, biases): one
linear assignment per layer (``mergeflow.align.unit_match``): by default the similarity on the tensors'
device and a sparse assignment certified optimal (``solver: sparse``), or scipy's dense one (``dense``),
or, approximately and much faster on CPUs, on candidates from a sketch of the similarity (``sketch``).

Heads (``heads: true``) are permuted as units: under grouped-query attention a key/value head
moves with its whole group of query heads. Two heads are compared by how well the best allowed
rotation can align them (for a free rotation, the nuclear norm of their cross-product; per RoPE
plane, the modulus of a complex inner product), summed over QK and VO, so the matching does not
depend on the rotations the rotate step fits afterwards.

``residual: true`` also permutes the residual stream, one permutation shared by every layer; it is
solved before the layers, jointly with them (``mergeflow.align.stream_solve``).

``method: activations`` matches the same units by the correlation of their activations on data instead
(``mergeflow.learn.activations`` collects them and solves the same assignments); the step then applies
the permutations found.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from mergeflow.align import assign
from mergeflow.align.assign import Solve
from mergeflow.align.base import (
    Found,
    Layer,
    MatchedParams,
    StepParams,
    align_step,
    ffn_prefixes,
    head_rows,
    method_problem,
    qk_fixed,
    stream_described,
)
from mergeflow.align.unit_match import match_units
from mergeflow.arch.families import FAMILIES
from mergeflow.arch.spec import Geometry

FFN_ROWS = ("up", "up.b", "gate", "gate.b")


class PermuteParams(MatchedParams):
    ffn: bool = Field(True, description="Permute FFN hidden units (gate and up rows together).")
    heads: bool = Field(False, description="Permute whole attention heads (key/value groups as units).")
    similarity: Literal["float64", "float32", "bfloat16"] = Field(
        "float32",
        description="Precision of the FFN similarity matrix (f x f x 3d multiply-adds, the step's whole "
        "cost): float32 is exact for the assignment up to near-ties; bfloat16 is several times faster on CPUs "
        "with bf16 matrix units and approximate. The assignment itself is solved in float64. With solver "
        "sketch: the precision of the sketch product that picks the candidates (bfloat16: twice as fast on "
        "CPUs with AVX512-BF16 or AMX and on GPUs; the candidates' scores stay float32).",
    )
    solver: Literal["sparse", "dense", "sketch"] = Field(
        "sparse",
        description="How FFN units are assigned. sparse: the whole similarity, a sparse assignment on each "
        "unit's best candidates, certified optimal on the whole matrix (edges that break the certificate are "
        "added; the dense solver decides if it keeps failing): the same permutation as dense, faster on wide "
        "FFNs. dense: scipy's assignment on the whole matrix (the reference). sketch: candidates from a count "
        "sketch of the unit features to sketch_dims dimensions, scored exactly, then the sparse assignment: "
        "several times faster on CPUs, approximate and not certified; for models that are close copies of each "
        "other up to the symmetry (fine-tunes of one base), not for independently trained ones.",
    )
    candidates: int = Field(
        8, ge=1, le=4096, description="Best candidates per unit (both ways) for solver sparse or sketch."
    )
    sketch_dims: int = Field(
        512,
        ge=8,
        le=1 << 16,
        description="Dimensions of the sketch (solver: sketch); more is slower and closer to exact.",
    )
    sketch_kind: Literal["count", "principal"] = Field(
        "count",
        description="How units are sketched (solver: sketch). count: a count sketch of the features (one pass "
        "of additions). principal: both models' units projected on the top sketch_dims principal directions of "
        "the anchor's units (a randomised SVD, 7 passes of f x width x sketch_dims multiply-adds), which keeps "
        "far more of a weak signal at the same dimensions.",
    )
    aligner: str | None = Field(
        None,
        description="A Deep-Align aligner folder made by `mergeflow learn-aligner` (method: learned), "
        "relative to the recipe.",
    )


assignment = assign.dense  # perm maximising sum_c score[perm[c], c] (rows: local, columns: anchor)


def unit_parts(layer: Layer, pre: str = "") -> list[torch.Tensor]:
    """An FFN's unit features as (f, d_i) views: the W_in (and gate) rows, biases, and W_out columns."""
    parts = [layer[pre + r].reshape(layer[pre + r].shape[0], -1) for r in FFN_ROWS if pre + r in layer]
    return [*parts, layer[pre + "down"].T]


def _agreement(local: Layer, anchor: Layer, perm: torch.Tensor | None, pre: str = "") -> float:
    """sum over units of <local unit perm[c], anchor unit c>, in float64."""
    total = 0.0
    for role in (pre + r for r in FFN_ROWS):
        if role in local:
            x = local[role] if perm is None else local[role][perm]
            total += float(torch.dot(x.reshape(-1), anchor[role].reshape(-1)))
    x = local[pre + "down"] if perm is None else local[pre + "down"][:, perm]
    return total + float(torch.dot(x.reshape(-1), anchor[pre + "down"].reshape(-1)))


def permute_ffn(
    local: Layer,
    anchor: Layer,
    similarity: str = "float32",
    pre: str = "",
    solver: str = "sparse",
    candidates: int = 8,
    sketch_dims: int = 512,
    sketch_kind: str = "count",
) -> Solve:
    """The hidden units of one FFN (``pre``: its roles' prefix, see ffn_prefixes) by linear assignment."""
    dtype = getattr(torch, similarity)
    parts = list(zip(unit_parts(local, pre), unit_parts(anchor, pre), strict=True))
    perm, info = match_units(parts, solver, candidates, sketch_dims, dtype, sketch_kind)
    # a bfloat16 similarity could in principle pick a worse matching than none: check in float64 (a sketch's
    # candidates are scored in float32 and always include the identity: never worse)
    if (
        dtype == torch.bfloat16
        and solver != "sketch"
        and _agreement(local, anchor, perm, pre) < _agreement(local, anchor, None, pre)
    ):
        return info
    apply_ffn(local, perm, pre)
    return info


def apply_ffn(local: Layer, perm: torch.Tensor, pre: str = "") -> None:
    """FFN unit c of the result is unit perm[c] of ``local`` (``pre``: which FFN, see ffn_prefixes)."""
    perm = perm.to(local[pre + "down"].device)
    for role in (pre + r for r in FFN_ROWS):
        if role in local:
            local[role] = local[role][perm]
    local[pre + "down"] = local[pre + "down"][:, perm]


def _best_trace(m: torch.Tensor, g: Geometry, group: str) -> float:
    """max tr(R M) over the rotations the rotate step may use on this circuit: free (nuclear norm),
    one angle per RoPE plane (|complex inner product| per plane), or none under QK-norm (trace)."""
    if group == "free":
        return float(torch.linalg.matrix_norm(m, ord="nuc"))
    if group == "none":
        return float(torch.trace(m))
    planes = g.planes()
    p = torch.tensor([a for a, _ in planes], device=m.device)
    q = torch.tensor([b for _, b in planes], device=m.device)
    total = float(torch.hypot(m[p, p] + m[q, q], m[p, q] - m[q, p]).sum())
    rest = sorted(set(range(g.d_h)) - {i for pl in planes for i in pl})
    if rest:
        idx = torch.tensor(rest, device=m.device)
        total += float(torch.linalg.matrix_norm(m[idx][:, idx], ord="nuc"))
    return total


def _head_score(local: Layer, anchor: Layer, g: Geometry, dtype: torch.dtype) -> torch.Tensor:
    """score[a, b]: how well local KV group a can match anchor KV group b once rotated."""
    qk_group = "none" if g.qk_norm else ("rope" if g.rope != "none" else "free")
    qk, vo = _crosses(local, anchor, g, "qk", dtype), _crosses(local, anchor, g, "vo", dtype)
    score = torch.zeros(g.h_kv, g.h_kv, dtype=torch.float64, device=local["v"].device)
    for a in range(g.h_kv):
        for b in range(g.h_kv):
            score[a, b] = _best_trace(qk[a, :, b].double(), g, qk_group) + _best_trace(
                vo[a, :, b].double(), g, "free"
            )
    return score


def _crosses(local: Layer, anchor: Layer, g: Geometry, circuit: str, dtype: torch.dtype) -> torch.Tensor:
    """(h_kv, d_h, h_kv, d_h): block [a, :, b, :] sums the cross-products of local KV group a and anchor KV
    group b on one circuit: key (value) rows, plus the group's query rows (output columns). Two matrix
    products for all pairs of groups at once."""
    kv, q = ("k", "q") if circuit == "qk" else ("v", "o")
    h, d = g.h_kv, g.d_h
    m = (local[kv].to(dtype) @ anchor[kv].to(dtype).T).reshape(h, d, h, d)
    if q == "q":  # rows (group a, query t, i) of q, over the model dim
        ql, qa = (x[q].to(dtype).reshape(h, g.group, d, -1) for x in (local, anchor))
        return m + torch.einsum("atin,btjn->aibj", ql, qa)
    ol, oa = (x[q].to(dtype).reshape(-1, h, g.group, d) for x in (local, anchor))  # columns of o
    return m + torch.einsum("nati,nbtj->aibj", ol, oa)


def permute_heads(local: Layer, anchor: Layer, g: Geometry, dtype: torch.dtype = torch.float64) -> None:
    apply_heads(local, g, assignment(_head_score(local, anchor, g, dtype)))


def apply_heads(local: Layer, g: Geometry, perm_t: torch.Tensor) -> None:
    """Key/value group c of the result is group perm[c] of ``local`` (with its query heads)."""
    perm = perm_t.tolist()
    kv = torch.cat([torch.arange(g.d_h) + p * g.d_h for p in perm])
    q = torch.cat([torch.arange(g.group * g.d_h) + p * g.group * g.d_h for p in perm])
    for role, idx in head_rows(q, kv):
        if role in local:
            local[role] = local[role][idx.to(local[role].device)]
    local["o"] = local["o"][:, q.to(local["o"].device)]


def _check(g: Geometry, p: PermuteParams, family: str) -> str | None:
    if p.method == "learned":
        return f"learned aligners (Deep-Align) are made for mlp models; {family} takes method: weights"
    if p.method == "activations" and p.ffn and FAMILIES[family].experts is not None:
        return (
            f"{family} has experts, whose units are not matched by activations yet; match them by weights "
            "(a permute step with method: weights)"
        )
    return stream_described(family, p) or qk_fixed(g, p.heads, family, "permute: {heads: false}")


def _in_list(i: int, steps: Sequence[tuple[str, StepParams | None]]) -> str | None:
    why = method_problem(steps[i][1])
    if why:
        return why
    if getattr(steps[i][1], "method", "weights") == "activations" and any(
        n == "permute" for n, _p in steps[:i]
    ):
        return "method: activations finds its permutations on the unpermuted model; make it the first permute step"
    rotate = next((j for j, (n, _p) in enumerate(steps) if n == "rotate"), None)
    if getattr(steps[i][1], "heads", False) and rotate is not None and rotate < i:
        return (
            "heads are paired before they are rotated (a rotation solved between unpaired heads is meaningless); "
            f"move this step before align[{rotate}].rotate"
        )
    return None


@align_step("permute", PermuteParams, _check, in_list=_in_list, stream_map="permutation")
def permute(
    local: Layer, anchor: Layer, g: Geometry, p: PermuteParams, found: Found = None
) -> dict[str, float] | None:
    """FFN hidden units by linear assignment (certified sparse, dense or sketched); whole heads with
    ``heads: true``; the residual stream with ``residual: true`` (solved jointly with the layers by coordinate
    descent). ``method: activations``
    matches them by activation correlations on data instead."""
    if p.method == "activations":
        if found is None:
            raise RuntimeError("permute: method activations ran without the permutations the data gave")
        if p.heads:
            apply_heads(local, g, found["heads"])
        if p.ffn:
            apply_ffn(local, found["ffn"])
        return None
    if p.heads:
        permute_heads(local, anchor, g, torch.float64 if p.similarity == "float64" else torch.float32)
    if not p.ffn:
        return None
    counts = dict.fromkeys(("ffn_solves", "certified", "dense_fallbacks", "rounds", "edges_added"), 0.0)
    for pre in ffn_prefixes(local):  # the dense FFN and each expert: spaces of their own
        info = permute_ffn(
            local, anchor, p.similarity, pre, p.solver, p.candidates, p.sketch_dims, p.sketch_kind
        )
        counts["ffn_solves"] += 1
        counts["certified"] += info.certified
        counts["dense_fallbacks"] += info.fallback
        counts["rounds"] += info.rounds
        counts["edges_added"] += info.added
    return counts
