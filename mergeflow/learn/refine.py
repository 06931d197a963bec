"""Learned refinement (the ``refine`` step): train the residual map and FFN permutations on data so that
the interpolated model (1 - l) anchor + l source has a low loss, then apply them exactly.

Both models are held in memory as stored-name state dicts (the anchor folded when the stream map is
orthogonal, the source already aligned by the weight-matching steps). Each step draws a batch and
l ~ U(lambda_range), builds the source's weights under the current transforms (differentiably, through
the same canonical-layer code as alignment), interpolates and runs the anchor's transformers class on
them with ``torch.func.functional_call``. The residual map is an orthogonal matrix updated by Adam and
projected back to its group (an SVD) after each step; a permutation is a latent matrix whose linear
assignment is used forward while gradients pass straight through to the latent matrix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mergeflow.align.permute import FFN_ROWS, assignment
from mergeflow.align.refine_step import RefineParams
from mergeflow.align.stream_map import ResidualMap, apply_layer, map_stream, solve
from mergeflow.arch.canonical import from_canonical, to_canonical
from mergeflow.arch.spec import ArchSpec, LayerNames
from mergeflow.arch.stream_layout import ResidualLayout
from mergeflow.errors import InputError
from mergeflow.learn.fused import Source, fused_params, params_from
from mergeflow.stats.data import Data, batches
from mergeflow.stats.model import Loaded, logits_and_mask, max_length_for, on_weights, stored_names


@dataclass
class RefineReport:
    section = "refine"  # where the alignment report lists it
    model: str
    losses: list[float] = field(default_factory=list)  # training loss per step (interpolated model)
    seconds: float = 0.0
    moved: dict[str, float] = field(default_factory=dict)  # ||O - I||_F and FFN units that changed
    mode: str = "whole"  # or "layered" (mergeflow.learn.layered)

    def summary(self) -> dict[str, Any]:
        k = max(1, len(self.losses) // 10)
        return {
            "model": self.model,
            "mode": self.mode,
            "steps": len(self.losses),
            "loss_first": float(np.mean(self.losses[:k])),
            "loss_last": float(np.mean(self.losses[-k:])),
            "seconds": round(self.seconds, 3),
            **self.moved,
        }


def transform(
    spec: ArchSpec,
    layout: ResidualLayout,
    state: dict[str, torch.Tensor],
    omat: torch.Tensor | None,
    perms: list[torch.Tensor | None],
    fold: bool,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """``state`` with the stream map ``omat`` (x' = O x) and per-layer FFN maps (new units = P old units)."""
    out = {k: v.to(dtype) for k, v in state.items()}
    rmap = ResidualMap(matrix=omat) if omat is not None else None
    for lay, p in zip(spec.layers, perms, strict=True):
        stored = {n: state[n] for n in lay.tensors()}
        out.update(
            transform_layer(spec, lay, stored, rmap, None if p is None else _by_matrix(p), fold, dtype)
        )
    out.update(transform_stream(layout, state, rmap, fold, dtype))  # already folded: only mapped here
    return out


def transform_layer(
    spec: ArchSpec,
    lay: LayerNames,
    stored: dict[str, torch.Tensor],
    rmap: ResidualMap | None,
    permute: Callable[[dict[str, torch.Tensor]], None] | None,
    fold: bool,
    dtype: torch.dtype,
    work: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    """One layer's stored tensors with its FFN units permuted (``permute`` edits the canonical layer) and the
    stream mapped, computed in ``work``, returned in ``dtype``."""
    canon = to_canonical(spec, lay, stored, work)
    if permute is not None:
        permute(canon)
    if rmap is not None:
        apply_layer(canon, rmap, fold)
    return from_canonical(spec, lay, canon, dtype)


def transform_stream(
    layout: ResidualLayout,
    state: Mapping[str, torch.Tensor],
    rmap: ResidualMap | None,
    fold: bool,
    dtype: torch.dtype,
    work: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    """The (already folded) tensors outside the layer stack, mapped."""
    return {
        st.name: map_stream(
            state[st.name].to(work), st.kind, st.axis, rmap, fold, None, layout.norm_offset
        ).to(dtype)
        for st in layout.tensors
    }


def _by_matrix(p: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], None]:
    """New units = P old units, as a (straight-through) matrix product."""

    def permute(canon: dict[str, torch.Tensor]) -> None:
        m = p.to(canon["down"])
        for role in FFN_ROWS:
            if role in canon:
                canon[role] = m @ canon[role]
        canon["down"] = canon["down"] @ m.T

    return permute


def _batch(data: Data, idx: np.ndarray) -> Data:
    return Data(
        data.path,
        None if data.texts is None else [data.texts[i] for i in idx],
        None if data.x is None else data.x[idx],
        None if data.labels is None else data.labels[idx],
    )


def _loss(
    loaded: Loaded, params: dict[str, torch.Tensor], data: Data, p: RefineParams, device: torch.device
) -> torch.Tensor:
    assert p.max_length is not None  # set once before the steps (max_length_for)
    inputs, labels, mask = next(
        iter(batches(data, loaded.tokenizer, len(data), p.max_length, device, loaded.image_shape))
    )
    logits, keep = logits_and_mask(on_weights(loaded, params), inputs, mask)
    if loaded.task == "classifier":
        if labels is None:
            raise InputError(f"{data.path}: refining a classifier needs labels (.npz 'y' or JSONL 'label')")
        return torch.nn.functional.cross_entropy(logits.float(), labels)
    ce = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), inputs["input_ids"][:, 1:], reduction="none"
    )
    return ce[keep].mean()


def module_names(loaded: Loaded, state: dict[str, torch.Tensor]) -> dict[str, Source]:
    """In-memory parameter name -> the stored tensor it is (by name), or the stored tensors it is fused from
    (learn.fused), for every float parameter of the model."""
    names = stored_names(loaded.model)
    params = dict(loaded.model.named_parameters())  # a tied parameter once, under its first name
    tied = set(dict(loaded.model.named_parameters(remove_duplicate=False))) - set(params)
    out: dict[str, Source] = {}
    missing = []
    for mod, t in loaded.model.state_dict().items():
        if mod in tied:  # given under the first name, which functional_call ties it to
            continue
        stored = names.get(mod, mod)
        if stored not in state and mod in state:  # tied weights: the stored name is the module's own
            stored = mod
        if stored in state:
            out[mod] = stored
        elif t.is_floating_point() and mod in params:
            missing.append(mod)
    out.update(fused := fused_params(loaded.model, missing, state))
    for mod in missing:
        if mod not in fused:
            raise InputError(
                f"parameter {mod!r} of {type(loaded.model).__name__} has no stored tensor mergeflow can build it "
                "from (the checkpoint stores it in a form transformers converts when loading)"
            )
    return out


@dataclass
class Problem:
    """What a refinement works on, in either mode: the anchor's model class and layout, both models (stored
    names; the anchor folded when the stream map is orthogonal, the source aligned by the steps before it),
    the data, the step's parameters, and ``group``: the stream map's group (orthogonal or
    orthogonal_centred), or None to learn permutations only."""

    loaded: Loaded
    spec: ArchSpec
    layout: ResidualLayout
    anchor: dict[str, torch.Tensor]
    source: dict[str, torch.Tensor]
    data: Data
    p: RefineParams
    group: str | None
    fold: bool
    model: str
    device: torch.device


def refine(
    job: Problem, progress: Callable[[int, float], None] | None = None
) -> tuple[dict[str, torch.Tensor], RefineReport]:
    """The whole mode: ``job.source`` (float64) refined toward ``job.anchor``, every tensor of the result."""
    loaded, spec, layout, data, group, fold, device = (
        job.loaded, job.spec, job.layout, job.data, job.group, job.fold, job.device
    )  # fmt: skip
    start = time.perf_counter()
    report = RefineReport(job.model)
    p = job.p.model_copy(update={"max_length": max_length_for(loaded, data, job.p.max_length)})  # once
    names = module_names(loaded, job.anchor)
    a32 = {k: v.to(device=device, dtype=torch.float32) for k, v in job.anchor.items()}
    b64 = {k: v.to(device=device, dtype=torch.float64) for k, v in job.source.items()}
    d = spec.geometry.d_model
    omat = torch.eye(d, dtype=torch.float64, device=device, requires_grad=group is not None)
    f = spec.ffn_width(lambda n: b64[n].shape)
    latents = [
        torch.eye(f, dtype=torch.float64, device=device, requires_grad=True) if p.permutations else None
        for _lay in spec.layers
    ]
    for param in loaded.model.parameters():
        param.requires_grad_(False)

    def step_loss(lam: float, idx: np.ndarray) -> torch.Tensor:
        perms = [None if z is None else _ste(z) for z in latents]
        tb = transform(spec, layout, b64, omat if group is not None else None, perms, fold, torch.float32)
        params = params_from(names, lambda st: torch.lerp(a32[st], tb[st], lam))
        return _loss(loaded, params, _batch(data, idx), p, device)

    train(p, len(data), omat, group, [z for z in latents if z is not None], step_loss, report, progress)
    with torch.no_grad():
        final_o = solve(omat.detach(), group).matrix if group is not None else None
        hard = [None if z is None else _hard(z) for z in latents]
        out = transform(spec, layout, b64, final_o, hard, fold, torch.float64)
        report.moved = moved_by(final_o, [None if h is None else h.argmax(1) for h in hard])
    report.seconds = time.perf_counter() - start
    return {k: v.detach() for k, v in out.items()}, report


def train(
    p: RefineParams,
    examples: int,
    omat: torch.Tensor,
    group: str | None,
    latents: list[torch.Tensor],
    step_loss: Callable[[float, np.ndarray], torch.Tensor],
    report: RefineReport,
    progress: Callable[[int, float], None] | None,
) -> None:
    """The optimiser steps of either mode: each draws l and a batch, takes ``step_loss(l, example indices)``,
    steps Adam on the stream map (then projected back to its group) and the permutations' latents."""
    groups = [{"params": [omat], "lr": p.lr}] if group is not None else []
    if latents:
        groups.append({"params": latents, "lr": p.perm_lr})
    if not groups:
        raise InputError("refine: nothing to learn (no orthogonal stream map and permutations: false)")
    opt = torch.optim.Adam(groups)
    rng = np.random.default_rng(p.seed)
    for _step in range(p.steps):
        lam = float(rng.uniform(*p.lambda_range))
        loss = step_loss(lam, rng.choice(examples, size=min(p.batch_size, examples), replace=False))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if group is not None:
            with torch.no_grad():
                nearest = solve(omat.detach(), group).matrix  # an orthogonal group: always a matrix
                assert nearest is not None
                omat.copy_(nearest)
        report.losses.append(float(loss.detach()))
        if progress is not None:
            progress(1, report.losses[-1])


def moved_by(omat: torch.Tensor | None, perms: list[torch.Tensor | None]) -> dict[str, float]:
    """How far the refinement moved: ||O - I||_F of the stream map and the FFN units whose place changed
    (``perms``: new unit i takes old unit perm[i])."""
    change = 0.0
    if omat is not None:
        change = float(torch.linalg.norm(omat - torch.eye(len(omat), dtype=omat.dtype, device=omat.device)))
    units = sum(int((q != torch.arange(len(q), device=q.device)).sum()) for q in perms if q is not None)
    return {"residual_change": change, "ffn_units_moved": units}


def _hard(z: torch.Tensor) -> torch.Tensor:
    perm = assignment(z.detach().T)  # new unit i takes old unit perm[i], maximising sum_i z[i, perm[i]]
    return torch.eye(len(perm), dtype=z.dtype, device=z.device)[perm]


def _ste(z: torch.Tensor) -> torch.Tensor:
    """The assignment forward, the identity's gradient backward (straight-through)."""
    return z + (_hard(z) - z).detach()
