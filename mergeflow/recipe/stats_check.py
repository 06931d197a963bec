"""Checks of the ``stats`` section: statistics files per model, for operators that need them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def check_stats(
    sec: dict[str, Any],
    ops: list[tuple[tuple[Any, ...], Any]],
    operators: Mapping[str, Any],
    root: Path,
    check_paths: bool,
    add: Any,
) -> dict[str, str]:
    """Problems go to ``add(path, message)``; returns the stats paths made absolute."""
    models = sec.get("models") or {}
    stats: dict[str, str] = sec.get("stats") or {}
    out = {}
    for name, raw in stats.items():
        if name not in models:
            add(("stats", name), "is not a key of models")
            continue
        p = Path(raw).expanduser()
        p = p if p.is_absolute() else root / p
        if check_paths and not p.is_file():
            add(("stats", name), f"statistics file does not exist: {p}")
        out[name] = str(p.resolve()) if check_paths else raw
    base = sec.get("base")
    for where, spec in ops:
        op = operators[spec.name] if spec.name in operators else None  # noqa: SIM401 (Registry.get raises)
        kind = getattr(op, "stats", None)
        if op is None or kind is None:
            continue
        fb = spec.params.get("fallback", op.params.model_fields["fallback"].default)
        fb_op = operators[fb] if isinstance(fb, str) and fb in operators else None
        if fb_op is None or getattr(fb_op, "stats", None) is not None or fb_op.needs_base:
            add(
                (*where, spec.name, "fallback"),
                f"'{fb}' is not an operator that merges without statistics or a base model",
            )
        missing = [m for m in models if m != base and m not in stats]
        if missing:
            add(
                ("stats",),
                f"operator {spec.name} needs {kind} statistics for model(s) {', '.join(missing)} "
                "(make them with `mergeflow stats MODEL --data DATA --kind " + kind + " -o FILE`)",
            )
    if stats and sec.get("align"):
        anchor = sec.get("anchor")
        aligned = [m for m in stats if m != anchor] if anchor != "auto" else list(stats)
        if aligned:
            add(
                ("stats",),
                f"model(s) {', '.join(aligned)} are aligned (re-parameterised), and statistics of the "
                "original models describe other coordinates; write the aligned models with `mergeflow align`, "
                "compute their statistics with `mergeflow stats`, and merge those"
                + (
                    " (with anchor: auto the anchor is not known before the run; name it)"
                    if anchor == "auto"
                    else ""
                ),
            )
    return out
