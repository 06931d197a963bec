"""Gram matrices X^T X of the inputs of every linear layer (nn.Linear and GPT-2's Conv1D), float32, summed
over the rows that reach the layer (tokens; padding masked out); the caller averages them (after adding up
the sums of several processes, when there are)."""

from __future__ import annotations

from typing import Any

import torch

from mergeflow.stats.model import Loaded


def linear_layers(model: Any) -> dict[str, tuple[Any, bool]]:
    """Weight name -> (module, stored transposed [in, out])."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            out[f"{name}.weight"] = (mod, False)
        elif type(mod).__name__ == "Conv1D" and hasattr(mod, "nf"):
            out[f"{name}.weight"] = (mod, True)
    return out


def in_width(layer: tuple[Any, bool]) -> int:
    """A linear layer's input width (its Gram is in_width x in_width), from (module, stored transposed)."""
    mod, transposed = layer
    return int(mod.weight.shape[0 if transposed else 1])


def available_bytes(device: torch.device) -> tuple[int, str]:
    """Memory free for new tensors on ``device``, and what it is called in messages."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"{device}'s free memory"
    import psutil

    return psutil.virtual_memory().available, "this machine's available memory"


def gram(
    loaded: Loaded, batches: Any, progress: Any, only: set[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, int], set[str]]:
    """(weight name -> summed Gram, weight name -> rows counted, transposed weight names). ``only``: the layers
    whose Grams are summed (default all); rows are counted for every layer."""
    layers = linear_layers(loaded.model)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(layers, 0)
    state: dict[str, torch.Tensor | None] = {"mask": None}

    def hook(name: str):
        def fn(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            mask = state["mask"]
            if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
                x = x[mask.bool()]
            x = x.reshape(-1, x.shape[-1])
            counts[name] += x.shape[0]
            if only is not None and name not in only:
                return
            x = x.float()
            g = x.T @ x
            sums[name] = sums[name].add_(g) if name in sums else g

        return fn

    handles = [mod.register_forward_pre_hook(hook(n)) for n, (mod, _t) in layers.items()]
    try:
        with torch.no_grad():
            for inputs, _labels, mask in batches:
                state["mask"] = mask
                loaded.model(**inputs)
                progress(len(next(iter(inputs.values()))))
    finally:
        for h in handles:
            h.remove()
    for n, layer in layers.items():  # a layer no row reached still has its zero sum
        if n not in sums and (only is None or n in only):
            sums[n] = torch.zeros(in_width(layer), in_width(layer), device=loaded.input_device)
    return sums, counts, {n for n, (_m, t) in layers.items() if t}
