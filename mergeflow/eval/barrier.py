"""Linear-mode-connectivity measurements: the loss along (1 - l) A + l B on a grid of l, before and
after aligning B to A, and the barrier max_l [L(l) - ((1 - l) L(0) + l L(1))]."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mergeflow.eval.loss import evaluate, interpolate_into, state_of
from mergeflow.io.scratch import scratch_folder
from mergeflow.stats.data import Data
from mergeflow.stats.model import (
    Loaded,
    check_fits,
    freed,
    load_model,
    max_length_for,
    stored_bytes,
    weight_bytes,
)
from mergeflow.stats.parallel import Group, process_group


def load_endpoint(a_dir: str | Path, device: torch.device) -> tuple[Loaded, dict[str, torch.Tensor]]:
    """Model A, loaded once for every curve from it, and a copy of its weights."""
    la = load_model(a_dir, device)
    return la, state_of(la)


def curve(
    a: tuple[Loaded, dict[str, torch.Tensor]],
    b_dir: str | Path,
    data: Data,
    points: int,
    progress: Callable[[int], None] = lambda n: None,
    max_length: int | None = None,
    group: Group | None = None,
) -> dict[str, Any]:
    """The path from A (see load_endpoint; its model is overwritten along the way) to the model in b_dir."""
    la, sa = a
    sb = state_of(load_model(b_dir, la.input_device))
    if set(sa) != set(sb) or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError(f"{b_dir} does not have the same parameters and shapes as model A")
    rows = []
    for lam in grid(points):
        interpolate_into(la, sa, sb, lam)
        rows.append({"lambda": lam, **evaluate(la, data, max_length=max_length, group=group)})
        progress(1)
    return summary(rows)


def grid(points: int) -> list[float]:
    return [i / (points - 1) for i in range(points)]


def curve_on_disk(
    a_dir: str | Path,
    b_dir: str | Path,
    data: Data,
    points: int,
    device: torch.device,
    max_memory: int,
    work: Path,
    progress: Callable[[int], None] = lambda n: None,
    max_length: int | None = None,
    group: Group | None = None,
) -> dict[str, Any]:
    """The same path for models larger than ``max_memory``: each inner point is written by a linear merge
    (streamed, tensor by tensor, float32) into ``work`` and evaluated placed under the budget. Processes on one
    machine share each point: the first writes it (see ``Group.made_once``)."""
    group = group or Group(0, 1, device)
    rows = []
    for lam in grid(points):
        path = (
            a_dir
            if lam == 0
            else b_dir
            if lam == 1
            else group.made_once(
                partial(interpolated, a_dir, b_dir, lam, work, device, max_memory), "eval barrier's point"
            )
        )
        loaded = load_model(path, device, max_memory=max_memory)
        rows.append({"lambda": lam, **evaluate(loaded, data, max_length=max_length, group=group)})
        del loaded
        freed()
        # the point this process wrote: gone before the next one is written (every process is done with it:
        # evaluate ends with a collective)
        if 0 < lam < 1 and group.makes_files:
            shutil.rmtree(path)
        progress(1)
    return summary(rows)


def interpolated(
    a_dir: str | Path, b_dir: str | Path, lam: float, work: Path, device: torch.device, max_memory: int
) -> Path:
    """(1 - lam) A + lam B in float32, written to work/point by a merge that keeps within ``max_memory``."""
    from mergeflow.api import Options, merge

    recipe = work / "point.yml"
    recipe.write_text(
        "models:\n"
        f"  a: {{path: {json.dumps(str(Path(a_dir).resolve()))}, params: {{weight: {1 - lam!r}}}}}\n"
        f"  b: {{path: {json.dumps(str(Path(b_dir).resolve()))}, params: {{weight: {lam!r}}}}}\n"
        "merge: {linear: {normalize: false}}\ndtype: float32\nout_dtype: float32\n"
    )
    out = work / "point"
    budget = max(max_memory, 256 << 20)  # a merge needs a little room whatever the model's size
    merge(recipe, out, Options(device=str(device), force=True, max_memory=budget))
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    l0, l1 = rows[0]["loss"], rows[-1]["loss"]
    gaps = [r["loss"] - ((1 - r["lambda"]) * l0 + r["lambda"] * l1) for r in rows]
    mid = min(rows, key=lambda r: abs(r["lambda"] - 0.5))
    return {
        "points": rows,
        "barrier": max(gaps),
        "midpoint_loss": mid["loss"],
        "loss_a": l0,
        "loss_b": l1,
        **({"midpoint_accuracy": mid["accuracy"]} if "accuracy" in mid else {}),
    }


def variants(steps: list[dict[str, Any]] | None) -> list[tuple[str, list[dict[str, Any]]]]:
    """naive, then the alignment steps added one at a time: +permute, +rotate, ..."""
    out: list[tuple[str, list[dict[str, Any]]]] = [("naive", [])]
    for i, step in enumerate(steps or []):
        out.append(("+" + next(iter(step)), list(steps[: i + 1])))  # type: ignore[index]
    return out


def folds(steps: list[dict[str, Any]]) -> bool:
    """Whether the steps map the stream orthogonally, which folds every model's norm scales (the anchor's too)."""
    from mergeflow.align.catalog import STEPS

    def orthogonal(name: str, params: dict[str, Any] | None) -> bool:
        info = STEPS.get(name) if name in STEPS else None
        if info is None or info.stream_map != "orthogonal":
            return False
        default = info.params.model_fields["residual"].default
        return bool((params or {}).get("residual", default))

    return any(orthogonal(name, params) for step in steps for name, params in step.items())


def _prepared(
    a_dir: str | Path,
    b_dir: str | Path,
    steps: list[dict[str, Any]],
    work: Path,
    device: str,
    keep: str = "model",
) -> Any:
    """The prepared alignment of B to A with ``steps`` (validated and planned; nothing written)."""
    from mergeflow.api import Options, prepare_align

    work.mkdir(parents=True, exist_ok=True)
    # data paths in the steps are absolute (the CLI resolves them against the steps file)
    return prepare_align(b_dir, a_dir, steps, Options(device=device, force=True), keep)


def aligned_copy(
    a_dir: str | Path,
    b_dir: str | Path,
    steps: list[dict[str, Any]],
    work: Path,
    device: str,
    keep: str = "model",
) -> Path:
    """B aligned to A with ``steps`` (through the same code as `mergeflow align`); ``keep="anchor"``: A as
    those steps re-parameterise it (folded), the endpoint a merge interpolates from."""
    from mergeflow.api import Options, merge

    prep = _prepared(a_dir, b_dir, steps, work, device, keep)
    out = work / f"{'anchor' if keep == 'anchor' else 'aligned'}{len(steps)}"
    merge(prep, out, Options(device=device, force=True))
    return out


def barrier_report(
    a_dir: str | Path,
    b_dir: str | Path,
    data: Data,
    steps: list[dict[str, Any]] | None,
    points: int,
    device: torch.device,
    progress: Callable[[int], None] = lambda n: None,
    max_memory: int | None = None,
    scratch: str | Path | None = None,
) -> dict[str, Any]:
    """Every curve of the report; models whose float32 weights exceed ``max_memory`` are evaluated placed
    under it, their inner points written to disk (curve_on_disk). Aligned copies and points go to a temporary
    folder under ``scratch`` (default: the system's), checked for room first; each variant's copies are
    deleted once its curve is done. Under a launcher the processes share the examples (stats.parallel); when
    they are all on this machine the first writes the temporary models for all (``Group.made_once``), else each
    writes its own."""
    group = process_group(device)
    with group.working():
        return _report(a_dir, b_dir, data, steps, points, group, progress, max_memory, scratch)


def _report(
    a_dir: str | Path,
    b_dir: str | Path,
    data: Data,
    steps: list[dict[str, Any]] | None,
    points: int,
    group: Group,
    progress: Callable[[int], None],
    max_memory: int | None,
    scratch: str | Path | None,
) -> dict[str, Any]:
    device = group.device
    out: dict[str, Any] = {
        "a": str(a_dir),
        "b": str(b_dir),
        "data": str(data.path),
        "examples": len(data),
        "processes": group.size,
        "variants": {},
    }
    first = load_model(a_dir, device, max_memory=max_memory)
    on_disk = first.offloaded  # larger than the budget: every point is placed, inner ones written to disk
    check_fits(first, data, a_dir)
    max_length = max_length_for(first, data, None)  # once, not at every point of every curve
    # in memory: A loaded once for every curve, and a copy of its weights; placed: each point loads its own
    a = None if on_disk else (first, state_of(first))
    del first
    freed()
    need, what = group.temporary_need(scratch_need(a_dir, b_dir, steps, on_disk), "eval barrier")
    with scratch_folder("mergeflow-barrier-", need, scratch, what) as tmp:
        if (
            steps
        ):  # every step validated and planned (e.g. a step the family refuses) before any curve is computed
            _prepared(a_dir, b_dir, steps, tmp / "check", str(device))
        for i, (name, prefix) in enumerate(variants(steps)):
            mine = tmp / f"variant{i}"  # this variant's copies and points, deleted after its curve
            start = time.perf_counter()
            copy = partial(aligned_copy, a_dir, b_dir, prefix, mine, str(device))
            b = b_dir if not prefix else group.made_once(copy, "eval barrier's aligned copy")
            seconds = time.perf_counter() - start if prefix else 0.0
            # an orthogonal stream map folds the anchor too: the path runs between the folded endpoints, as a merge's
            folded = prefix and folds(prefix)
            a_path = (
                group.made_once(partial(copy, "anchor"), "eval barrier's folded anchor") if folded else a_dir
            )
            if on_disk and max_memory is not None:
                (mine / "points").mkdir(parents=True, exist_ok=True)
                path = curve_on_disk(
                    a_path, b, data, points, device, max_memory, mine / "points", progress, max_length, group
                )
            else:
                assert a is not None
                path = curve(
                    load_endpoint(a_path, device) if folded else a,
                    b,
                    data,
                    points,
                    progress,
                    max_length,
                    group,
                )
            shutil.rmtree(mine, ignore_errors=True)
            freed()  # a folded variant's endpoint model
            out["variants"][name] = {"steps": prefix, "align_seconds": round(seconds, 3), **path}
    return out


def scratch_need(
    a_dir: str | Path, b_dir: str | Path, steps: list[dict[str, Any]] | None, on_disk: bool
) -> int:
    """The most temporary disk one variant holds: B aligned (as stored), A folded where a step folds it, and
    for placed models one float32 point at a time."""
    need = 0
    if steps:
        need += stored_bytes(b_dir) + (stored_bytes(a_dir) if folds(steps) else 0)
    return need + (weight_bytes(a_dir) if on_disk else 0)
