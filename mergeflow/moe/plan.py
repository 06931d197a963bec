"""The plan of a mixture of experts: the base model's tensors copied, except each layer's MLP, which
becomes one expert per expert model (its own MLP, copied, optionally noised and its output scaled),
plus the router rows of each layer; written in the base model's order, layer by layer."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mergeflow.errors import ModelError
from mergeflow.graph.operator_choice import check_budget
from mergeflow.graph.plan import Plan
from mergeflow.graph.tasks import Load, Write
from mergeflow.io.dtypes import NAMES, TORCH_TO_ST, is_float
from mergeflow.io.reader import ModelReader
from mergeflow.io.writer import OutTensor, plan_shards
from mergeflow.moe.arch import MLP_RE, MoeArch
from mergeflow.moe.gates import GateRows, Gates


@dataclass(frozen=True)
class ExpertTensor:
    """A tensor of a dense model as it goes into an expert: noise added, the output projection scaled."""

    op = "moe"
    name: str
    source: Load
    scale: float | None
    noise: float | None
    seed: int

    def deps(self) -> tuple[Any, ...]:
        return (self.source,)

    def run(self, ctx: Any, x: torch.Tensor) -> torch.Tensor:
        if self.noise:
            gen = torch.Generator().manual_seed(self.seed ^ zlib.crc32(self.name.encode()))
            x = x + self.noise * torch.randn(x.shape, generator=gen).to(x)
        return x * self.scale if self.scale is not None else x


@dataclass(frozen=True)
class Router(GateRows):
    op = "router"


def build_moe_plan(
    recipe: Any,
    readers: Mapping[str, ModelReader],
    arch: MoeArch,
    base: str,
    experts: list[tuple[str, Any]],
    shared: tuple[str, Any] | None,
    gates: Gates,
    config: dict[str, Any],
    max_memory: int | None = None,
) -> Plan:
    """``experts``: (model name, Expert) per routed expert; ``shared``: the shared expert's, if any."""
    ref = readers[base]
    csize = torch.empty((), dtype=NAMES[recipe.dtype]).element_size()
    loads: dict[tuple[str, str], Load] = {}
    writes: list[Write] = []
    outs: list[OutTensor] = []
    peak, peak_name = 0, ""
    routed = len(experts)
    done_router: set[int] = set()
    who = [(i, name, e) for i, (name, e) in enumerate(experts)] + (
        [(-1, *shared)] if shared is not None else []
    )

    def load(model: str, tensor: str) -> Load:
        info = readers[model].info(tensor)
        return loads.setdefault(
            (model, tensor), Load(model, tensor, info.numel, info.nbytes, is_float(info.dtype))
        )

    def out_dtype(stored: str) -> str:
        return TORCH_TO_ST[NAMES[recipe.out_dtype]] if recipe.out_dtype and is_float(stored) else stored

    def add(name: str, dtype: str, shape: tuple[int, ...], task: Any) -> None:
        nonlocal peak, peak_name
        out = OutTensor(name, dtype, shape)
        outs.append(out)
        writes.append(Write(out, task))
        need = int(torch.Size(shape).numel() * csize * 2 + out.nbytes)
        if need > peak:
            peak, peak_name = need, name

    for t, info in ref.tensors.items():
        m = MLP_RE.match(t)
        if m is None:
            if ".mlp." in t:
                raise ModelError(
                    f"model '{base}': tensor {t!r} is part of an MLP but is not a gate/up/down "
                    "projection weight; a mixture of experts cannot take it"
                )
            add(t, out_dtype(info.dtype), info.shape, load(base, t))
            continue
        layer, pre, proj = int(m["layer"]), m["pre"], m["proj"]
        if layer not in done_router:
            done_router.add(layer)
            hidden = info.shape[1] if proj != "down_proj" else info.shape[0]
            add(pre + arch.router, out_dtype(info.dtype), (routed, hidden), Router(gates, layer, 0, routed))
            if shared is not None and arch.shared_router is not None:
                add(
                    pre + arch.shared_router,
                    out_dtype(info.dtype),
                    (1, hidden),
                    Router(gates, layer, routed, routed + 1),
                )
        for i, name, e in who:
            other = readers[name].tensors.get(t)
            if other is None or other.shape != info.shape:
                got = "lacks it" if other is None else f"has shape {list(other.shape)}"
                raise ModelError(
                    f"expert model '{name}': tensor {t!r} {got}; the base model's is {list(info.shape)}"
                )
            pattern = arch.shared if i < 0 else arch.expert
            oname = pre + (pattern or "").format(e=i, proj=arch.proj[proj])
            task = ExpertTensor(
                oname,
                load(name, t),
                e.residual_scale if proj == "down_proj" else None,
                e.noise_scale,
                recipe.seed,
            )
            add(oname, out_dtype(other.dtype), info.shape, task)
    if not done_router:
        raise ModelError(
            f"model '{base}' has no MLP projections (model.layers.N.mlp.gate_proj/up_proj/down_proj)"
        )
    check_budget(peak, f"tensor {peak_name!r}", max_memory)
    layouts = plan_shards(outs, int(recipe.output.shard_size))
    return Plan(
        recipe,
        writes,
        layouts,
        sum(ld.stored_bytes for ld in loads.values()),
        sum(o.nbytes for o in outs),
        peak,
        peak_name,
        {f"moe ({arch.name})": len(outs)},
        len(outs),
        config_json=config,
    )
