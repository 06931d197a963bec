"""A safetensors file written a tensor at a time: the header first (names, dtypes, shapes, offsets), then each
tensor as it is produced, so that at most one tensor is in memory (safetensors' ``save_file`` serialises the
whole file in memory first)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mergeflow.io.dtypes import TORCH_TO_ST
from mergeflow.io.ownership import open_new


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]  # called once, when the tensor is written


def save_streamed(
    entries: Sequence[Entry], path: Path, metadata: dict[str, str], in_order: bool = False
) -> None:
    """Write ``entries`` (in name order; ``in_order``: in the order given, which is the order their ``make`` is
    called in) to ``path``; each tensor is made, converted to its entry's dtype on the host, written from its
    own memory and dropped before the next."""
    header: dict[str, object] = {"__metadata__": {"format": "pt", **metadata}}
    ordered = list(entries) if in_order else sorted(entries, key=lambda e: e.name)
    offset = 0
    for e in ordered:
        size = torch.Size(e.shape).numel() * torch.empty((), dtype=e.dtype).element_size()
        header[e.name] = {
            "dtype": TORCH_TO_ST[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with os.fdopen(open_new(Path(path)), "wb") as fh:  # a new file: nothing under the name is written through
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for e in ordered:
            t = e.make().detach().to("cpu", e.dtype).contiguous()
            if tuple(t.shape) != tuple(e.shape):
                raise ValueError(
                    f"tensor {e.name!r}: made with shape {list(t.shape)}, declared {list(e.shape)}"
                )
            fh.write(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
