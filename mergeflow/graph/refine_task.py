"""The ``refine`` step in the task graph: one task per source model holds both models in memory, applies
the weight-matching steps before it, trains the refinement (``mergeflow.learn.refine``) and hands out the
source's re-parameterised tensors. The models are read a layer at a time (float64 only while a layer is
aligned) and kept in float64 (whole mode) or float32 (layered mode, ``mergeflow.learn.layered``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from mergeflow.align.base import StepParams
from mergeflow.align.layer import LayerReport, distances
from mergeflow.align.matching import Found
from mergeflow.align.refine_step import RefineParams
from mergeflow.align.stream_map import ResidualMap
from mergeflow.align.whole_model import align_state, fold_state
from mergeflow.arch.canonical import to_canonical
from mergeflow.arch.spec import ArchSpec
from mergeflow.arch.stream_layout import ResidualLayout
from mergeflow.graph.match_task import LazyModel, MatchModel
from mergeflow.graph.stream_tasks import ResidualPlan, SolveResidual
from mergeflow.io.untie import UntiedReader


@dataclass(frozen=True)
class RefineModel:
    reads_whole_models: ClassVar[bool] = True  # its shards are read outside the plan's loads
    model: str
    anchor: str
    anchor_dir: str
    spec: ArchSpec
    layout: ResidualLayout
    steps: tuple[tuple[str, StepParams], ...]
    params: RefineParams
    plan: ResidualPlan
    solve: SolveResidual
    match: MatchModel | None = None  # activation matching, when a step before it asks for it
    layered: bool = False  # refine's layered mode (chosen by the planner): float32 models, a layer at a time
    canonical: str = "float64"  # the recipe's align_dtype: the precision of the weight matching before it
    whole_need: int | None = None  # mode auto, planned whole: its bytes, checked against the GPU's memory

    def layered_on(self, device: torch.device) -> bool:
        """The mode to run: the planner's, or layered where auto planned whole (it fits the host budget) and
        the whole mode's need exceeds the memory of the GPU it would run on."""
        if self.layered or self.whole_need is None or device.type != "cuda":
            return self.layered
        return self.whole_need > torch.cuda.get_device_properties(device).total_memory

    def held_on(self, ctx: Any, layered: bool) -> torch.device | None:
        """Where the layered mode holds the two float32 models: on the host when computing on a GPU whose
        memory they would take more than half of (the rest is for a layer's working set and activations),
        else where it computes (None)."""
        if not layered or ctx.device.type != "cuda":
            return None
        numel = sum(t.numel for t in ctx.readers[self.anchor].tensors.values())
        half = torch.cuda.get_device_properties(ctx.device).total_memory // 2
        return torch.device("cpu") if 8 * numel > half else None

    def deps(self) -> tuple[Any, ...]:
        return (self.solve,) + ((self.match,) if self.match is not None else ())

    def run(self, ctx: Any, rmap: ResidualMap, found: Found | None = None) -> dict[str, torch.Tensor]:
        from mergeflow.learn.layered import refine_layered
        from mergeflow.learn.refine import Problem, refine
        from mergeflow.stats.data import load_data
        from mergeflow.stats.model import load_model

        layered = self.layered_on(ctx.device)
        keep = torch.float32 if layered else torch.float64  # float64 one layer at a time when layered
        hold = self.held_on(ctx, layered)
        a = LazyModel(ctx, self.anchor, torch.float64)
        b1, reports = align_state(
            self.spec,
            self.layout,
            LazyModel(ctx, self.model, torch.float64),
            a,
            self.steps,
            rmap,
            self.plan.fold,
            self.model,
            found.layers if found is not None else None,
            keep,
            getattr(torch, self.canonical),
            hold,
        )
        ctx.align_reports.extend(reports)
        a1 = (
            fold_state(self.spec, self.layout, a, keep, getattr(torch, self.canonical), hold)
            if self.plan.fold
            else {n: a[n].to(hold, keep) for n in a}
        )
        group = self.plan.orthogonal
        assert self.params.data is not None  # validated: refine needs data
        data = load_data(self.params.data)
        loaded = load_model(
            Path(self.anchor_dir),
            ctx.device,
            untie=isinstance(ctx.readers[self.anchor], UntiedReader),
            skeleton=layered,
        )
        bar = ctx.progress.bar(f"refine {self.model}", self.params.steps, nested=True)

        def progress(n: int, loss: float) -> None:
            bar.update(n)
            bar.postfix(f"loss {loss:.4f}")

        job = Problem(
            loaded,
            self.spec,
            self.layout,
            a1,
            b1,
            data,
            self.params,
            group,
            self.plan.fold,
            self.model,
            ctx.device,
        )
        try:
            out, report = (
                refine_layered(job, ctx.compute_dtype, progress) if layered else refine(job, progress)
            )
        finally:
            bar.close()
        ctx.align_reports.append(report)
        layers = {lay.index: lay for lay in self.spec.layers}
        for rep in reports:  # each layer's distance after the refinement, as a stage of its own
            if isinstance(rep, LayerReport) and rep.layer in layers:
                lay = layers[rep.layer]
                rep.steps.append(
                    ("refine", distances(to_canonical(self.spec, lay, out), to_canonical(self.spec, lay, a1)))
                )
        changed = set(self.spec.layer_of()) | {t.name for t in self.layout.tensors}
        return {n: out[n].to(ctx.device, ctx.compute_dtype) for n in changed}  # held on the host: back
