"""Tasks that re-index a model's embedding or head rows to the output tokenizer's ids.

``FillRows`` computes, once per tensor, the rows that models lacking a token take from the others
(see tokenizer.build); ``Reindex`` gives one model's tensor in the output's row order: its own row of
each token it has, the fill row of each token it lacks, zeros in the padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mergeflow.errors import InputError
from mergeflow.tokenizer.build import VocabMap


@dataclass(frozen=True)
class FillRows:
    tensor: str
    vmap: VocabMap
    models: tuple[str, ...]  # the models whose rows fill others' gaps, in vmap.fill order
    inputs: tuple[Any, ...]  # each one's whole tensor (a Load or an aligned tensor)

    def deps(self) -> tuple[Any, ...]:
        return self.inputs

    def run(self, ctx: Any, *values: torch.Tensor) -> torch.Tensor:
        rest = values[0].shape[1:] if values else self.vmap.tensors[self.tensor][1:]
        dtype = values[0].dtype if values else ctx.compute_dtype
        out = torch.zeros((len(self.vmap.fill_ids), *rest), dtype=dtype, device=ctx.device)
        by_model = dict(zip(self.models, values, strict=True))
        for model, pos, rows, weight in self.vmap.fill:
            src = by_model[model]
            _check_rows(rows, src, model, self.tensor)
            w = weight.to(device=src.device, dtype=src.dtype).view(-1, *([1] * (src.dim() - 1)))
            out.index_add_(0, pos.to(src.device), src[rows.to(src.device)] * w)
        return out


@dataclass(frozen=True)
class Reindex:
    model: str
    tensor: str
    vmap: VocabMap
    source: Any  # the model's whole tensor
    fill: FillRows

    def deps(self) -> tuple[Any, ...]:
        return (self.source, self.fill)

    def run(self, ctx: Any, own: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        vm = self.vmap
        out = torch.zeros((vm.rows, *own.shape[1:]), dtype=own.dtype, device=own.device)
        idx = vm.index[self.model].to(own.device)
        have = (idx >= 0).nonzero().flatten()
        _check_rows(idx[have], own, self.model, self.tensor)
        out[have] = own[idx[have]]
        gaps = vm.fill_ids.to(own.device)
        lacks = idx[gaps] < 0  # fill rows only where this model lacks the token (or it is forced)
        out[gaps[lacks]] = fill[lacks]
        return out


def _check_rows(rows: torch.Tensor, src: torch.Tensor, model: str, tensor: str) -> None:
    if rows.numel() and int(rows.max()) >= src.shape[0]:
        raise InputError(
            f"tensor {tensor!r} of model '{model}' has {src.shape[0]} rows; the tokenizer section "
            f"asks for row {int(rows.max())}"
        )


def reindexed(
    vmap: VocabMap, tensor: str, members: list[str], base: str | None, source: Any
) -> dict[str, Any]:
    """Model -> the task giving its re-indexed ``tensor``; ``source(model, tensor, rows)`` gives the
    model's own tensor (a Load, or the aligned tensor)."""
    needed = [m for m, *_ in vmap.fill]
    fill = FillRows(tensor, vmap, tuple(needed), tuple(source(m, tensor, None) for m in needed))
    who = [*members, *([base] if base is not None and base not in members else [])]
    return {m: Reindex(m, tensor, vmap, source(m, tensor, None), fill) for m in who}
