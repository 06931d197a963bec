"""One-line notes, before a run starts, on costs the user may want to choose differently: today, exact FFN
matching of large models on a CPU (minutes per model at 7B size; docs/performance.md)."""

from __future__ import annotations

from typing import Any

from mergeflow.align.permute import PermuteParams

NOTE_FROM = 8192  # FFN units from which an exact solve on a CPU takes tens of seconds per layer


def ffn_note(prep: Any) -> str | None:
    """The note for a prepared run (``graph.run.Prepared``), or None."""
    recipe = prep.recipe
    spec = prep.plan.arch  # the transformer layout the plan aligns (None for mlp models: no such note)
    if prep.device.type != "cpu" or not recipe.align or spec is None:
        return None
    exact = [
        p
        for p in (PermuteParams.model_validate(s.params) for s in recipe.align if s.name == "permute")
        if p.ffn and p.method == "weights" and p.solver != "sketch"
    ]
    reader = prep.readers.get(prep.plan.anchor or "")
    if not exact or reader is None:
        return None
    layer = spec.layers[0] if spec.layers else None
    down = layer.get("down") if layer is not None else None
    if layer is None or down is None:  # no dense FFN (experts): matched per expert, smaller
        return None
    shape = reader.tensors[down].shape
    f, d = (shape[0], shape[1]) if spec.family.conv1d else (shape[1], shape[0])
    if f < NOTE_FROM:
        return None
    parts = sum(layer.get(role) is not None for role in ("gate", "up", "down"))  # d features per unit each
    return (
        f"note: permute (solver {exact[0].solver}) matches FFN units exactly: a {f} x {f} similarity per layer "
        f"({f * f * parts * d:.1e} multiply-adds, {len(spec.layers)} layers), minutes per model on a CPU; "
        "--device cuda, or 'solver: sketch' (approximate, several times faster on CPUs): docs/performance.md"
    )
