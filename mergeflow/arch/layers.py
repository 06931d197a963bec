"""Where a tensor sits in the layer stack, for gradients (parameters that vary across layers).

Names are matched as stored in checkpoint files: ``model.layers.7.``, ``encoder.layer.7.``,
``transformer.h.7.``, ``blocks.7.``. Tensors outside the stack take position 0 when they are
embeddings (read before the first layer) and 1 otherwise (final norms, heads, poolers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
PRE_RE = re.compile(r"embed|wte|wpe|patch|cls_token|position|token_type|mask_token|distillation_token")


def layer_index(name: str) -> int | None:
    m = LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def num_layers(names: Iterable[str], config: Mapping[str, Any] | None) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if config and isinstance(config.get(key), int) and config[key] > 0:
            return int(config[key])
    found = [i for i in (layer_index(n) for n in names) if i is not None]
    return max(found) + 1 if found else 0


def position(name: str, n_layers: int, outside: float | None = None) -> float:
    """0 for the first layer, 1 for the last; outside the stack ``outside``, by default embeddings 0
    and other tensors (final norms, heads) 1."""
    i = layer_index(name)
    if i is None:
        if outside is not None:
            return outside
        return 0.0 if PRE_RE.search(name) else 1.0
    return i / (n_layers - 1) if n_layers > 1 else 0.0
