"""Part-1 alignment of a whole model held in memory (stored names -> tensors): the same per-layer and
stream transforms the task graph applies tensor by tensor, for steps that need the whole model at once
(learned refinement). The models may be lazy mappings that read a tensor when asked: only one layer of
float64 is then made at a time, and the result is kept in ``keep``'s precision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mergeflow.align.base import Found, StepParams
from mergeflow.align.layer import LayerReport, align_layer, fold_only
from mergeflow.align.stream_map import ResidualMap, map_stream, stream_value
from mergeflow.arch.spec import ArchSpec
from mergeflow.arch.stream_layout import ResidualLayout


def fold_state(
    spec: ArchSpec,
    layout: ResidualLayout,
    state: Mapping[str, torch.Tensor],
    keep: torch.dtype = torch.float64,
    canonical: torch.dtype = torch.float64,
    store: torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """The anchor with its norm scales folded into their readers (in ``canonical``, the recipe's align_dtype);
    the result in ``keep`` on ``store`` (default: where it was computed)."""
    out: dict[str, torch.Tensor] = {}
    for lay in spec.layers:
        out.update(_kept(fold_only(spec, lay, {n: state[n] for n in lay.tensors()}, keep, canonical), store))
    gamma = state[layout.final_norm].double() if layout.final_norm else None
    for st in layout.tensors:
        value = stream_value(state[st.name].double(), st.kind, True, gamma, layout.norm_offset)
        out[st.name] = value.to(store, keep)
    return _rest(state, out, keep, store)


def align_state(
    spec: ArchSpec,
    layout: ResidualLayout,
    local: Mapping[str, torch.Tensor],
    anchor: Mapping[str, torch.Tensor],
    steps: Sequence[tuple[str, StepParams]],
    rmap: ResidualMap,
    fold: bool,
    model: str,
    found: Mapping[int, Found] | None = None,
    keep: torch.dtype = torch.float64,
    canonical: torch.dtype = torch.float64,
    store: torch.device | None = None,
) -> tuple[dict[str, torch.Tensor], list[LayerReport]]:
    """``local`` mapped and aligned to ``anchor`` (both as stored; the anchor unfolded), each layer computed in
    ``canonical`` (the recipe's align_dtype), kept in ``keep`` on ``store`` (default: where computed);
    ``found``: per layer index, what activation matching found."""
    out: dict[str, torch.Tensor] = {}
    reports = []
    for lay in spec.layers:
        names = lay.tensors()
        aligned, rep = align_layer(
            spec,
            lay,
            {n: local[n] for n in names},
            {n: anchor[n] for n in names},
            steps,
            keep,
            model,
            rmap,
            fold,
            (found or {}).get(lay.index),
            canonical,
        )
        out.update(_kept(aligned, store))
        reports.append(rep)
    gamma = local[layout.final_norm].double() if fold and layout.final_norm else None
    for st in layout.tensors:
        out[st.name] = map_stream(
            local[st.name].double(), st.kind, st.axis, rmap, fold, gamma, layout.norm_offset
        ).to(store, keep)
    return _rest(local, out, keep, store), reports


def _rest(
    state: Mapping[str, torch.Tensor],
    out: dict[str, torch.Tensor],
    keep: torch.dtype,
    store: torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """``out`` and the tensors of ``state`` it does not hold, in ``keep`` on ``store``."""
    for name in state:
        if name not in out:
            out[name] = state[name].to(store, keep)
    return out


def _kept(tensors: dict[str, torch.Tensor], store: torch.device | None) -> dict[str, torch.Tensor]:
    return tensors if store is None else {n: t.to(store) for n, t in tensors.items()}
