"""Is B the same function as A on this data? Max |difference| of logits and of every hidden state. Under a
launcher the processes split the examples and take the largest of their maxima (stats.parallel)."""

from __future__ import annotations

from typing import Any

import torch

from mergeflow.stats.data import Data, batches
from mergeflow.stats.model import check_fits, load_model
from mergeflow.stats.parallel import process_group


def equivalence(
    a_dir: str,
    b_dir: str,
    data: Data,
    device: torch.device,
    batch_size: int = 32,
    max_length: int = 128,
    max_memory: int | None = None,
) -> dict[str, Any]:
    """``max_memory``: the most bytes of each model's weights held in memory (see stats.model)."""
    group = process_group(device)
    with group.working():
        worst = _worst(
            a_dir, b_dir, data.part(group.index, group.size), group.device, batch_size, max_length, max_memory
        )
        keys = ("logits", "hidden_states", "logits_scale")
        return {**worst, **dict(zip(keys, group.most([worst[k] for k in keys]), strict=True))}


def _worst(
    a_dir: str,
    b_dir: str,
    data: Data,
    device: torch.device,
    batch_size: int,
    max_length: int,
    max_memory: int | None,
) -> dict[str, Any]:
    la = load_model(a_dir, device, headless=True, max_memory=max_memory)
    lb = load_model(b_dir, device, headless=True, max_memory=max_memory)
    check_fits(la, data, a_dir)
    worst: dict[str, Any] = {
        "logits": 0.0,
        "hidden_states": 0.0,
        "logits_scale": 0.0,
        "output": "last hidden state" if la.task == "encoder" else "logits",
    }
    with torch.no_grad():
        for inputs, _labels, mask in batches(
            data, la.tokenizer, batch_size, max_length, device, la.image_shape
        ):
            oa = la.model(**inputs, output_hidden_states=True)
            ob = lb.model(**inputs, output_hidden_states=True)
            ya, yb = (o.logits if la.task != "encoder" else o.last_hidden_state for o in (oa, ob))
            sel = None if mask is None or ya.dim() < 3 else mask.bool()

            def keep(t: torch.Tensor, sel: torch.Tensor | None = sel) -> torch.Tensor:
                return t if sel is None else t[sel]

            worst["logits"] = max(worst["logits"], float((keep(ya) - keep(yb)).abs().max()))
            worst["logits_scale"] = max(worst["logits_scale"], float(keep(ya).abs().max()))
            for ha, hb in zip(oa.hidden_states or (), ob.hidden_states or (), strict=True):
                worst["hidden_states"] = max(worst["hidden_states"], float((keep(ha) - keep(hb)).abs().max()))
    return worst
