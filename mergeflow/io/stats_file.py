"""Statistics files: safetensors whose tensor names are the model's parameter names.

``fisher``: the diagonal Fisher of each parameter (same shape). ``gram``: for each linear layer's
weight, the averaged Gram matrix X^T X of the layer's inputs ([in, in]). The header metadata
records the kind, the number of examples (and tokens for ``gram``), the model the statistics were
computed on, which weights are stored transposed ([in, out], GPT-2's Conv1D) and, for ``fisher``,
the mean over all entries (for per-model normalisation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergeflow.errors import InputError
from mergeflow.files import check_regular
from mergeflow.io.ownership import atomic_write, lexical
from mergeflow.io.stream_save import Entry, save_streamed

KINDS = ("fisher", "gram")


class StatsError(InputError):
    pass


@dataclass(frozen=True)
class StatsInfo:
    path: Path
    kind: str
    examples: int
    mean: float  # mean Fisher entry (fisher) or 1.0
    transposed: frozenset[str]
    model: str


def write_stats(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    kind: str,
    examples: int,
    model: str,
    transposed: set[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise StatsError(f"{path}: name statistics files *.safetensors")
    # in float64, a block at a time (a float64 copy of a 14336^2 Gram would be 1.6 GB)
    total = sum(float(b.double().sum()) for t in tensors.values() for b in t.reshape(-1).split(1 << 22))
    numel = sum(t.numel() for t in tensors.values())
    meta = {
        "mergeflow_stats": kind,
        "examples": str(examples),
        "model": str(model),
        "mean": repr(total / max(numel, 1)),
        "transposed": json.dumps(sorted(transposed or ())),
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return atomic_write(lexical(path), lambda tmp: save_float32(tensors, tmp, meta))


def save_float32(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """A safetensors file of float32 tensors, written a tensor at a time (the Grams of a large model are
    gigabytes; safetensors' ``save_file`` would hold a second copy)."""
    entries = [Entry(n, tuple(t.shape), torch.float32, t.detach) for n, t in tensors.items()]
    save_streamed(entries, path, metadata)


def stats_info(path: str | Path, who: str) -> StatsInfo:
    """Read and check a statistics file's metadata; ``who`` names it in errors (e.g. "stats.a")."""
    from safetensors import safe_open

    p = Path(path)
    try:
        check_regular(p, f"{who}: statistics file")
    except InputError as exc:
        raise StatsError(str(exc)) from None
    if p.suffix != ".safetensors":
        raise StatsError(f"{who}: {p}: statistics files are .safetensors files")
    try:
        with safe_open(str(p), "pt") as h:
            meta = h.metadata() or {}
    except Exception as exc:  # noqa: BLE001  (safetensors raises several types for a bad file)
        raise StatsError(f"{who}: {p} is not a safetensors statistics file ({exc})") from None
    kind = meta.get("mergeflow_stats")
    if kind not in KINDS:
        raise StatsError(
            f"{who}: {p} is not a mergeflow statistics file (no 'mergeflow_stats' metadata); "
            "make one with `mergeflow stats`"
        )
    try:
        return StatsInfo(
            p,
            kind,
            int(meta.get("examples", "0")),
            float(meta.get("mean", "1")),
            frozenset(json.loads(meta.get("transposed", "[]"))),
            meta.get("model", ""),
        )
    except (ValueError, TypeError) as exc:
        raise StatsError(f"{who}: {p}: malformed metadata ({exc})") from None
