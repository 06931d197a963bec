"""Activation matching in the task graph: one ``MatchModel`` per source model runs both models over the
data (``mergeflow.learn.activations``) and yields what it found: the stream's map for ``SolveResidual`` and
per-layer permutations for the ``AlignLayer`` and ``RefineModel`` tasks. Like refinement it holds both
models in memory (the forward passes need whole models); its statistics are per layer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import torch

from mergeflow.align.base import MatchedParams, StepParams, maps_stream
from mergeflow.align.catalog import STEPS
from mergeflow.align.matching import Found, Want
from mergeflow.arch.spec import ArchSpec
from mergeflow.arch.stream_layout import ResidualLayout
from mergeflow.errors import RecipeError
from mergeflow.io.dtypes import is_float
from mergeflow.io.untie import UntiedReader

_SETTINGS = ("data", "batches", "batch_size", "max_length")


def read_model(ctx: Any, model: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every float tensor of ``model`` (stored names), on the run's device."""
    return dict(LazyModel(ctx, model, dtype))


class LazyModel(Mapping[str, torch.Tensor]):
    """The float tensors of ``model`` (stored names) on the run's device, each read when asked for."""

    def __init__(self, ctx: Any, model: str, dtype: torch.dtype) -> None:
        self.reader, self.dtype, self.device = ctx.readers[model], dtype, ctx.device
        self.names = [n for n, t in self.reader.tensors.items() if is_float(t.dtype)]
        self.known = frozenset(self.names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.reader.tensors:
            raise KeyError(name)
        return cast(torch.Tensor, self.reader.read(name, dtype=self.dtype, device=self.device))

    def __contains__(self, name: object) -> bool:  # without reading the tensor (Mapping's default would)
        return name in self.known

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def stream_group(norm: str) -> str:
    return "orthogonal" if norm == "rms" else "orthogonal_centred"


def match_want(
    steps: Sequence[tuple[str, StepParams]], layout: ResidualLayout | None
) -> tuple[Want, str] | None:
    """What the steps with ``method: activations`` ask to match, and their data file; None when none does."""
    act = [(i, n, p) for i, (n, p) in enumerate(steps) if getattr(p, "method", "weights") == "activations"]
    if not act:
        return None
    first = act[0][2]
    for i, n, p in act[1:]:
        if any(getattr(p, k) != getattr(first, k) for k in _SETTINGS):
            raise RecipeError(
                [
                    f"align[{i}].{n}: its {', '.join(_SETTINGS)} differ from align[{act[0][0]}]'s; "
                    "activations are collected once, on one data file"
                ]
            )
    perms = [p for _i, n, p in act if STEPS[n].stream_map == "permutation"]  # the steps that permute units
    orth = any(maps_stream(n, p) == "orthogonal" for _i, n, p in act)
    stream = None
    if orth and layout is not None:
        stream = stream_group(layout.norm)
    elif any(getattr(p, "residual", False) for p in perms):
        stream = "permutation"
    mp = cast(MatchedParams, first)  # method: activations is a MatchedParams option
    want = Want(
        any(getattr(p, "ffn", False) for p in perms),
        any(getattr(p, "heads", False) for p in perms),
        stream,
        mp.batches,
        mp.batch_size,
        mp.max_length,
    )
    return want, str(mp.data)


@dataclass(frozen=True)
class MatchModel:
    reads_whole_models: ClassVar[bool] = True  # its shards are read outside the plan's loads
    model: str
    anchor: str
    anchor_dir: str
    spec: ArchSpec
    want: Want
    data: str

    def deps(self) -> tuple[Any, ...]:
        return ()

    def run(self, ctx: Any) -> Found:
        from mergeflow.learn.activations import match_activations
        from mergeflow.stats.data import load_data
        from mergeflow.stats.model import check_fits, load_model

        data = load_data(self.data)
        loaded = load_model(
            Path(self.anchor_dir), ctx.device, untie=isinstance(ctx.readers[self.anchor], UntiedReader)
        )
        check_fits(loaded, data, self.anchor_dir)
        a, b = read_model(ctx, self.anchor, torch.float32), read_model(ctx, self.model, torch.float32)
        total = min(len(data), self.want.batches * self.want.batch_size)
        bar = ctx.progress.bar(f"activations {self.model}", total, unit="ex", nested=True)
        try:
            found, report = match_activations(
                loaded, self.spec, a, b, data, self.want, self.model, ctx.device, bar.update
            )
        finally:
            bar.close()
        ctx.align_reports.append(report)
        return found
