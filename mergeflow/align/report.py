"""The alignment report (``alignment.json`` and the console table): squared distance to the anchor per model,
layer, module and step, and what the whole-model solves did. Pure data: the caller writes it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mergeflow.align.layer import MODULES, LayerReport, add_counts


def summarise(all_reports: Sequence[Any]) -> dict[str, Any]:
    """Totals per model and stage (before, then after each step), per module and overall; with a residual
    map, the coordinate descent's passes per model."""
    # layer order, whatever order they were made in (layers aligned in lanes finish in any order)
    reports = sorted((r for r in all_reports if isinstance(r, LayerReport)), key=lambda r: (r.model, r.layer))
    sections: dict[str, list[Any]] = {}  # whole-model solves: residual maps, refinements
    for r in all_reports:
        if not isinstance(r, LayerReport):
            sections.setdefault(r.section, []).append(r.summary())
    models: dict[str, dict[str, dict[str, float]]] = {}
    for rep in reports:
        stages = models.setdefault(rep.model, {})
        for stage, d in rep.steps:
            tot = stages.setdefault(stage, dict.fromkeys([*MODULES, "total"], 0.0))
            for m, v in d.items():
                tot[m] += v
                tot["total"] += v
    seconds: dict[str, float] = {}
    counts: dict[str, dict[str, float]] = {}
    for rep in reports:
        for step, c in rep.counts.items():
            add_counts(counts, step, c)
    for rep in reports:
        for step, sec in rep.seconds.items():
            seconds[step] = seconds.get(step, 0.0) + sec
    layers = [
        {"model": r.model, "layer": r.layer, "stages": [{"stage": s, **d} for s, d in r.steps]}
        for r in reports
    ]
    for r in all_reports:
        if not isinstance(r, LayerReport):
            seconds[r.section] = seconds.get(r.section, 0.0) + r.seconds
    return {"totals": models, "seconds": seconds, "counts": counts, "layers": layers, **sections}


def table(summary: dict[str, Any]) -> str:
    """Console table: one row per model and stage, squared distances to the anchor."""
    lines = [
        f"{'model':12s} {'stage':10s} " + " ".join(f"{m:>12s}" for m in [*MODULES, "total"]) + "   vs before"
    ]
    for model, stages in summary["totals"].items():
        before = stages.get("before", {}).get("total", 0.0)
        for stage, d in stages.items():
            rel = f"{d['total'] / before:10.4f}" if before else " " * 10
            lines.append(
                f"{model:12s} {stage:10s} "
                + " ".join(f"{d[m]:12.5g}" for m in [*MODULES, "total"])
                + f"   {rel}"
            )
    for r in summary.get("residual", []):
        lines.append(
            f"residual map of {r['model']}: {r['passes']} passes, whole-model distance "
            f"{r['distance_start']:.5g} -> {r['distance_best']:.5g}"
            + (" (identity)" if r["identity"] else "")
        )
    for r in summary.get("activations", []):
        corr = "".join(
            f", {w} correlation {r[f'{w}_correlation_identity']:.3f} -> {r[f'{w}_correlation_matched']:.3f}"
            for w in ("ffn", "stream")
            if f"{w}_correlation_matched" in r
        )
        lines.append(
            f"activations of {r['model']}: {r['examples']} examples, {r['rows']} rows per point, "
            f"{r['passes']} pass(es){corr}"
        )
    for r in summary.get("refine", []):
        lines.append(
            f"refine {r['model']}: {r['steps']} steps, interpolated-model loss {r['loss_first']:.4g} -> "
            f"{r['loss_last']:.4g}, residual map moved {r['residual_change']:.3g}, "
            f"{r['ffn_units_moved']} FFN units moved"
        )
    for step, c in summary.get("counts", {}).items():
        lines.append(f"{step}: " + ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in c.items()))
    if summary.get("seconds"):
        lines.append("solve time: " + ", ".join(f"{k} {v:.2f} s" for k, v in summary["seconds"].items()))
    return "\n".join(lines)
