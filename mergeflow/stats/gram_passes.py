"""Gram statistics larger than memory: the linear layers split into groups whose Grams fit the memory where
they are summed, one pass over the data per group, each group's averaged Grams written into the statistics
file as soon as its pass ends. One group (one pass) when everything fits. A 7B model's Grams (~39 GB) take a
few passes on a machine of 24 GiB instead of being refused; the file is the same either way (each layer's sum
does not depend on which other layers were hooked)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from mergeflow.errors import InputError
from mergeflow.stats import gram as gram_mod
from mergeflow.stats.model import Loaded
from mergeflow.stats.parallel import Group

HEADROOM = 2  # a group's Grams may take at most this fraction (1/HEADROOM) of the free memory
META_ROOM = 4096  # bytes of header kept free for the metadata only known after the passes


def plan_groups(loaded: Loaded, model_dir: str | Path, group: Group) -> list[list[str]]:
    """Weight names of the linear layers in model order, split so that each group's float32 Grams take at most
    1/HEADROOM of the free memory where they are summed; refused when one layer's alone does not fit. Under a
    launcher every process gets the same groups (its passes' collectives must match): planned from the least
    free memory of any process, shared by the processes on one machine when they compute on its host memory."""
    layers = gram_mod.linear_layers(loaded.model)
    free, where = gram_mod.available_bytes(loaded.input_device)
    share = group.sharing_host if loaded.input_device.type != "cuda" else 1
    free = group.least(free // share)
    where += f" per process ({share} on this machine)" if share > 1 else ""
    budget = free // HEADROOM
    groups: list[list[str]] = [[]]
    held = 0
    for name, layer in layers.items():
        size = 4 * gram_mod.in_width(layer) ** 2
        if size > budget:
            raise InputError(
                f"{model_dir}: the Gram of {name!r} alone is {size / 2**20:.0f} MiB, more than half of {where} "
                f"({free / 2**30:.2f} GiB); take fisher statistics (the weights' size), or run on a machine with "
                "more memory"
            )
        if held + size > budget and groups[-1]:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += size
    return groups


def averaged(
    loaded: Loaded, groups: list[list[str]], make_batches: Callable[[], Any], progress: Any, group: Group
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, int]]]:
    """Per group: its Grams averaged over the rows that reached each layer (sums and row counts added over
    the processes first; layers no row reached left out), and every layer's row count."""
    for names in groups:
        sums, counts, _t = gram_mod.gram(loaded, make_batches(), progress, set(names))
        summed = group.sum(
            {n: torch.tensor([c], dtype=torch.float64, device=loaded.input_device) for n, c in counts.items()}
        )
        rows = {n: int(float(r[0])) for n, r in summed.items()}
        sums = group.sum(sums)
        out = {n: t.div_(float(rows[n])) for n, t in sums.items() if rows[n] > 0}
        del sums  # nothing here may keep a group alive while the next pass runs
        yield out, rows
        del out


def write_groups(
    path: Path,
    shapes: Sequence[tuple[str, tuple[int, ...]]],
    chunks: Iterator[dict[str, torch.Tensor]],
    metadata: Callable[[float], dict[str, str]],
) -> None:
    """A safetensors file of float32 tensors written as ``chunks`` come (in the order of ``shapes``): the
    header's tensor entries are known first, its metadata (``metadata(mean of all entries)``) last, written
    into room kept for it. Entries never produced stay zero (a layer no row reached)."""
    offsets, offset = {}, 0
    for name, shape in shapes:
        size = 4 * torch.Size(shape).numel()
        offsets[name] = [offset, offset + size]
        offset += size

    def header(meta: dict[str, str], room: int) -> bytes:
        entries: dict[str, Any] = {"__metadata__": {"format": "pt", **meta}}
        entries.update({n: {"dtype": "F32", "shape": list(s), "data_offsets": offsets[n]} for n, s in shapes})
        raw = json.dumps(entries, separators=(",", ":")).encode()
        return raw + b" " * (room - len(raw)) if room else raw

    room = len(header({}, 0)) + META_ROOM
    room += -room % 8  # the data starts 8-byte aligned
    total, numel = 0.0, sum(torch.Size(s).numel() for _n, s in shapes)
    with open(path, "w+b") as fh:
        fh.write(struct.pack("<Q", room) + b" " * room)
        fh.truncate(8 + room + offset)  # zeros until written
        it = iter(chunks)
        while (chunk := next(it, None)) is not None:  # no name holds the last chunk during the next pass
            for name in [n for n in chunk if n in offsets]:
                t = chunk.pop(name).detach().to("cpu", torch.float32).contiguous()
                total += sum(float(b.double().sum()) for b in t.reshape(-1).split(1 << 22))
                fh.seek(8 + room + offsets[name][0])
                fh.write(t.numpy().data)
                del t
            del chunk
        final = header(metadata(total / max(numel, 1)), room)
        if len(final) > room:
            raise InputError(f"{path}: statistics metadata too long for the room kept for it")
        fh.seek(8)
        fh.write(final)
